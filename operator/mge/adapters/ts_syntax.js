// Long-lived TypeScript syntax checker: one JSON request per stdin line, one JSON answer per stdout line.
// Request: {"id": 1, "file": "src/a.ts", "code": "..."}; answer: {"id": 1, "errors": ["src/a.ts:3:5: ..."]}, or
// {"id": 1, "failure": "..."} when the compiler itself threw (a fault of the checker, not of the code).
// Answers carry their request's id: the caller matches them by id, never by order.
"use strict";
const ts = require("typescript");
const readline = require("readline");

const lines = readline.createInterface({ input: process.stdin, terminal: false });
lines.on("line", (line) => {
  let request;
  try {
    request = JSON.parse(line);
  } catch (error) {
    process.stdout.write(JSON.stringify({ id: null, errors: ["bad request: " + error.message] }) + "\n");
    return;
  }
  const isJsx = /\.(tsx|jsx)$/.test(request.file);
  let result;
  try {
    result = ts.transpileModule(request.code, {
      fileName: request.file,
      reportDiagnostics: true,
      compilerOptions: isJsx
        ? { target: ts.ScriptTarget.ES2022, jsx: ts.JsxEmit.Preserve }
        : { target: ts.ScriptTarget.ES2022 },
    });
  } catch (error) {
    process.stdout.write(JSON.stringify({ id: request.id, failure: String((error && error.stack) || error) }) + "\n");
    return;
  }
  const errors = (result.diagnostics || [])
    .filter((d) => d.category === ts.DiagnosticCategory.Error)
    .map((d) => {
      const where = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start) : null;
      const position = where ? `${where.line + 1}:${where.character + 1}` : "?";
      return `${request.file}:${position}: TS${d.code}: ${ts.flattenDiagnosticMessageText(d.messageText, "\n")}`;
    });
  process.stdout.write(JSON.stringify({ id: request.id, errors }) + "\n");
});
