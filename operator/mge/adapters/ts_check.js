// Type-checks several TypeScript programs in one process, as `tsc --noEmit` would one by one: the
// declaration files they share (the standard library, @types/node) are parsed once, a second of CPU per
// program saved. Run with `node -e` (the sandbox hides this file's folder).
// Argument: JSON [{"label", "args"}], args as tsc's command line. Prints "<label>: <diagnostics>" for each
// program with errors; exit status 1 if any had one.
"use strict";
const path = require("path");
const ts = require("typescript");

const shared = new Map();

function host(options) {
  const base = ts.createCompilerHost(options);
  const detection = JSON.stringify([options.moduleDetection, options.jsx]);
  const read = base.getSourceFile;
  base.getSourceFile = (fileName, version, onError, create) => {
    if (!fileName.endsWith(".d.ts")) return read.call(base, fileName, version, onError, create);
    const key = JSON.stringify([fileName, version, detection]);
    if (!shared.has(key)) shared.set(key, read.call(base, fileName, version, onError, create));
    return shared.get(key);
  };
  return base;
}

function check(args) {
  const line = ts.parseCommandLine(args);
  if (line.errors.length) return line.errors;
  let { fileNames, options, projectReferences } = line;
  let errors = [];
  if (options.project) {
    let config = path.resolve(options.project);
    if (ts.sys.directoryExists(config)) config = path.join(config, "tsconfig.json");
    const extend = { ...options };
    delete extend.project;
    const parsed = ts.getParsedCommandLineOfConfigFile(config, extend, {
      ...ts.sys,
      onUnRecoverableConfigFileDiagnostic: (diagnostic) => errors.push(diagnostic),
    });
    if (!parsed) return errors;
    ({ fileNames, options, projectReferences } = parsed);
    errors = errors.concat(parsed.errors);
  }
  const program = ts.createProgram({ rootNames: fileNames, options, projectReferences, host: host(options) });
  return errors.concat(ts.getPreEmitDiagnostics(program));
}

const format = {
  getCanonicalFileName: (name) => name,
  getCurrentDirectory: ts.sys.getCurrentDirectory,
  getNewLine: () => ts.sys.newLine,
};
let failed = false;
for (const job of JSON.parse(process.argv[process.argv.length - 1])) {
  const errors = check(job.args).filter((d) => d.category === ts.DiagnosticCategory.Error);
  if (errors.length) {
    failed = true;
    process.stdout.write(`${job.label}: ${ts.formatDiagnostics(errors, format)}\n`);
  }
}
process.exitCode = failed ? 1 : 0;
