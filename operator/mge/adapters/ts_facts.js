// Module facts of TypeScript/JavaScript files read with the TypeScript compiler's own parser: the files
// tree-sitter could not read whole. Same facts as mge/deps/ts_source.py: module references (kind, line,
// imported names, re-exported pairs, template heads/tails of dynamic imports) and exported names, plus the
// compiler's syntax errors (a file that has them is really invalid).
// Usage: node ts_facts.js REQUESTS.json ANSWERS.json; requests [{"file", "code"}], answers in the same order.
"use strict";
const fs = require("fs");
const ts = require("typescript");

const JSX = /\.(tsx|jsx|js|mjs|cjs)$/;

function scriptKind(file) {
  if (file.endsWith(".tsx")) return ts.ScriptKind.TSX;
  if (JSX.test(file)) return ts.ScriptKind.JSX;
  return ts.ScriptKind.TS;
}

function has(node, kind) {
  return (ts.canHaveModifiers(node) ? ts.getModifiers(node) || [] : []).some((m) => m.kind === kind);
}

function literal(node) {
  if (node && (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node))) return node.text;
  return null;
}

function bindingNames(name, out) {
  if (ts.isIdentifier(name)) out.push(name.text);
  else for (const element of name.elements) if (!ts.isOmittedExpression(element)) bindingNames(element.name, out);
}

function read(file, code) {
  const source = ts.createSourceFile(file, code, ts.ScriptTarget.Latest, true, scriptKind(file));
  const line = (node) => source.getLineAndCharacterOfPosition(node.getStart(source)).line + 1;
  const specifiers = [];
  const exports = new Set();
  const bindings = new Map();
  const localExports = [];
  const add = (node, specifier, kind, extra = {}) =>
    specifiers.push({ specifier, line: typeof node === "number" ? node : line(node), kind, ...extra });

  for (const reference of source.referencedFiles) {
    const path = reference.fileName;
    const at = source.getLineAndCharacterOfPosition(reference.pos).line + 1;
    add(at, path.startsWith("./") || path.startsWith("../") ? path : "./" + path, "type");
  }

  function importDeclaration(node) {
    const specifier = literal(node.moduleSpecifier);
    if (specifier === null) return;
    const clause = node.importClause;
    if (!clause) return add(node, specifier, "side-effect");
    const names = [];
    let namespace = false;
    let allTypes = true;
    let elements = 0;
    if (clause.name) {
      names.push("default");
      bindings.set(clause.name.text, [specifier, "default"]);
    }
    const named = clause.namedBindings;
    if (named && ts.isNamespaceImport(named)) {
      namespace = true;
      bindings.set(named.name.text, [specifier, "*"]);
    } else if (named) {
      for (const element of named.elements) {
        elements += 1;
        const imported = (element.propertyName || element.name).text;
        names.push(imported);
        bindings.set(element.name.text, [specifier, imported]);
        if (!element.isTypeOnly) allTypes = false;
      }
    }
    allTypes = allTypes && !clause.name && !namespace && elements > 0;
    add(node, specifier, clause.isTypeOnly || allTypes ? "type" : "static", { names: namespace ? null : names });
  }

  function statement(node) {
    if (ts.isImportDeclaration(node)) return importDeclaration(node);
    if (ts.isImportEqualsDeclaration(node)) {
      if (has(node, ts.SyntaxKind.ExportKeyword)) exports.add(node.name.text);
      const reference = node.moduleReference;
      if (ts.isExternalModuleReference(reference)) {
        const specifier = literal(reference.expression);
        if (specifier !== null) add(node, specifier, node.isTypeOnly ? "type" : "static", { names: null });
      }
      return;
    }
    if (ts.isExportDeclaration(node)) {
      const specifier = node.moduleSpecifier ? literal(node.moduleSpecifier) : null;
      const clause = node.exportClause;
      const pairs = clause && ts.isNamedExports(clause)
        ? clause.elements.map((e) => [(e.propertyName || e.name).text, e.name.text])
        : null;
      if (specifier !== null) {
        const reexports = clause && ts.isNamespaceExport(clause) ? [["*", clause.name.text]] : pairs;
        return add(node, specifier, "re-export", { reexports });
      }
      if (pairs) localExports.push([node, pairs]);
      return;
    }
    if (ts.isExportAssignment(node)) return exports.add("default");
    if (ts.isModuleDeclaration(node) && ts.isStringLiteral(node.name)) {
      if (node.body && ts.isModuleBlock(node.body)) node.body.statements.forEach(statement);
      return;
    }
    if (!has(node, ts.SyntaxKind.ExportKeyword)) return;
    if (has(node, ts.SyntaxKind.DefaultKeyword)) return exports.add("default");
    if (ts.isVariableStatement(node)) {
      const names = [];
      for (const declaration of node.declarationList.declarations) bindingNames(declaration.name, names);
      names.forEach((name) => exports.add(name));
    } else if (node.name && ts.isIdentifier(node.name)) {
      exports.add(node.name.text); // function, class, interface, type, enum, namespace
    }
  }

  function calls(node) {
    if (ts.isImportTypeNode(node)) {
      const argument = node.argument;
      const specifier = argument && ts.isLiteralTypeNode(argument) ? literal(argument.literal) : null;
      if (specifier !== null) add(node, specifier, "type", { names: null });
    } else if (ts.isCallExpression(node)) {
      const argument = node.arguments[0];
      if (node.expression.kind === ts.SyntaxKind.ImportKeyword) {
        const specifier = literal(argument);
        if (specifier !== null) add(node, specifier, "dynamic");
        else if (argument && ts.isTemplateExpression(argument)) {
          const spans = argument.templateSpans;
          add(node, null, "dynamic", {
            prefix: argument.head.text,
            suffix: spans[spans.length - 1].literal.text,
            text: argument.getText(source),
          });
        } else add(node, null, "dynamic", { text: argument ? argument.getText(source) : "" });
      } else if (ts.isIdentifier(node.expression) && node.expression.text === "require" && node.arguments.length === 1) {
        const specifier = literal(argument);
        add(node, specifier, "require", specifier === null ? { text: argument.getText(source) } : {});
      }
    }
    ts.forEachChild(node, calls);
  }

  source.statements.forEach(statement);
  for (const [node, pairs] of localExports) {
    for (const [local, exported] of pairs) {
      const binding = bindings.get(local);
      if (binding === undefined) exports.add(exported);
      else add(node, binding[0], "re-export", { reexports: [[binding[1], exported]] });
    }
  }
  calls(source);
  specifiers.sort((a, b) => a.line - b.line);
  const errors = (source.parseDiagnostics || []).map((d) => {
    const where = source.getLineAndCharacterOfPosition(d.start);
    return `${file}:${where.line + 1}:${where.character + 1}: TS${d.code}: ${ts.flattenDiagnosticMessageText(d.messageText, " ")}`;
  });
  return { file, specifiers, exports: [...exports], errors };
}

const requests = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
fs.writeFileSync(process.argv[3], JSON.stringify(requests.map((r) => read(r.file, r.code))));
