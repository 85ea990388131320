"""Module references and exported names of one TypeScript/JavaScript source, read from its tree-sitter syntax tree."""

import re
import string
from collections.abc import Iterator
from dataclasses import replace

import tree_sitter
import tree_sitter_typescript

from mge.deps.graph import EdgeKind
from mge.deps.typescript import SourceFacts, Specifier

_TYPESCRIPT = tree_sitter.Language(tree_sitter_typescript.language_typescript())
# JavaScript files may hold JSX (tsc parses it in any .js file); `<T>x` casts, the one TypeScript construct
# the TSX grammar reads differently, are not JavaScript.
_TSX = tree_sitter.Language(tree_sitter_typescript.language_tsx())
_TSX_SUFFIXES = (".tsx", ".js", ".jsx", ".mjs", ".cjs")
# tsc reads triple-slash directives with a pattern too; only `path` references name project files.
_REFERENCE_PATH = re.compile(rb"""^///\s*<reference\s+path\s*=\s*(?:"([^"]*)"|'([^']*)')""")
# Declarations whose `name` is the exported binding (`export function f`, `export namespace N`, ...).
_NAMED_DECLARATIONS = frozenset(
    {
        "function_declaration",
        "generator_function_declaration",
        "function_signature",
        "class_declaration",
        "abstract_class_declaration",
        "interface_declaration",
        "type_alias_declaration",
        "enum_declaration",
        "internal_module",
    }
)
# Parents that put an `import("x")` in a type (`typeof import("x")`, `let v: import("x").T`).
_TYPE_PARENTS = frozenset(
    {
        "type_annotation",
        "type_query",
        "type_arguments",
        "type_alias_declaration",
        "constraint",
        "default_type",
        "extends_type_clause",
        "implements_clause",
        "opting_type_annotation",
        "omitting_type_annotation",
        "adding_type_annotation",
        "asserts_annotation",
        "type_predicate_annotation",
    }
)


# Shared by every call: tree-sitter keeps the GIL for a whole parse, so threads cannot interleave in one.
_PARSERS = {"typescript": tree_sitter.Parser(_TYPESCRIPT), "tsx": tree_sitter.Parser(_TSX)}


def _text(node: tree_sitter.Node) -> str:
    return (node.text or b"").decode("utf-8", "replace")


def _line(node: tree_sitter.Node) -> int:
    return node.start_point.row + 1


def _string_value(node: tree_sitter.Node | None) -> str | None:
    """The value of a string literal or a template literal without substitutions; None for anything else."""
    if node is None:
        return None
    is_template = node.type == "template_string"
    if node.type != "string" and not is_template:
        return None
    if is_template and any(child.type == "template_substitution" for child in node.children):
        return None
    raw = _text(node)[1:-1]
    return _unescape(raw) if "\\" in raw else raw


_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


def _unescape(raw: str) -> str:
    """A JavaScript string's escapes decoded; a malformed one is kept as written."""
    out: list[str] = []
    index = 0
    while index < len(raw):
        char = raw[index]
        if char != "\\" or index + 1 == len(raw):
            out.append(char)
            index += 1
            continue
        escaped = raw[index + 1]
        if escaped in "ux":
            braced = escaped == "u" and raw.startswith("{", index + 2)
            start = index + 3 if braced else index + 2
            end = raw.find("}", start) if braced else start + (4 if escaped == "u" else 2)
            digits = raw[start:end] if end <= len(raw) else ""
            if not digits or any(c not in string.hexdigits for c in digits) or int(digits, 16) > 0x10FFFF:
                out.append(raw[index : index + 2])
                index += 2
                continue
            out.append(chr(int(digits, 16)))
            index = end + 1 if braced else end
        elif escaped == "\n":
            index += 2  # a line continuation
        else:
            out.append(_SIMPLE_ESCAPES.get(escaped, escaped))
            index += 2
    return "".join(out)


def _name(node: tree_sitter.Node | None) -> str | None:
    """An identifier's or a string-literal name's text (`import { "a-b" as c }`)."""
    if node is None:
        return None
    return _string_value(node) if node.type == "string" else _text(node)


def _binding_names(pattern: tree_sitter.Node, out: list[str]) -> None:
    """Names a destructuring pattern binds: `const [a, { b, c: d, ...e }] = x` binds a, b, d, e."""
    kind = pattern.type
    if kind in ("identifier", "shorthand_property_identifier_pattern"):
        out.append(_text(pattern))
    elif kind == "pair_pattern":
        value = pattern.child_by_field_name("value")
        if value is not None:
            _binding_names(value, out)
    elif kind in ("assignment_pattern", "object_assignment_pattern"):
        left = pattern.child_by_field_name("left")
        if left is not None:
            _binding_names(left, out)
    else:  # array_pattern, object_pattern, rest_pattern
        for child in pattern.named_children:
            _binding_names(child, out)


class _FileReader:
    """Walks one file's top-level statements (and `declare module` bodies) collecting its module facts."""

    def __init__(self, file: str, source: bytes, root: tree_sitter.Node) -> None:
        self.file = file
        self.source = source
        self.root = root
        self.specifiers: list[Specifier] = []
        self.exports: set[str] = set()
        self.import_bindings: dict[str, tuple[str, str]] = {}  # local name -> (specifier, imported name)
        self.local_exports: list[tuple[tree_sitter.Node, list[tuple[str, str]]]] = []

    def read(self) -> SourceFacts:
        self._references()
        for statement in _statements(self.root):
            self._statement(statement)
        # `import { a } from "./x"; export { a }` re-exports; imports may follow the export statement.
        for node, pairs in self.local_exports:
            for local, exported in pairs:
                binding = self.import_bindings.get(local)
                if binding is None:
                    self.exports.add(exported)
                else:
                    self._add(node, binding[0], EdgeKind.RE_EXPORT, reexports=((binding[1], exported),))
        self._calls()
        self.specifiers.sort(key=lambda spec: spec.line)
        return SourceFacts(file=self.file, specifiers=tuple(self.specifiers), exports=frozenset(self.exports))

    def _add(
        self,
        node: tree_sitter.Node,
        specifier: str | None,
        kind: EdgeKind,
        names: tuple[str, ...] | None = None,
        reexports: tuple[tuple[str, str], ...] | None = None,
        template: tuple[str, str] | None = None,
        text: str = "",
    ) -> None:
        prefix, suffix = template or (None, "")
        self.specifiers.append(
            Specifier(specifier, _line(node), kind, names, reexports, prefix, suffix, text)
        )

    def _references(self) -> None:
        """`/// <reference path>` directives count only in the comments that open the file, as in tsc."""
        for node in self.root.children:
            if node.type != "comment":
                return
            match = _REFERENCE_PATH.match(node.text or b"")
            if match:
                path = (match[1] if match[1] is not None else match[2]).decode("utf-8", "replace")
                specifier = path if path.startswith(("./", "../")) else "./" + path
                self._add(node, specifier, EdgeKind.TYPE)

    def _statement(self, node: tree_sitter.Node) -> None:
        kind = node.type
        if kind == "import_statement":
            self._import(node)
        elif kind == "export_statement":
            self._export(node)
        elif kind == "ambient_declaration":
            for child in node.named_children:
                if child.type == "module":  # declare module "x" { import ... }
                    body = child.child_by_field_name("body")
                    if body is not None:
                        for statement in _statements(body):
                            self._statement(statement)

    def _import(self, node: tree_sitter.Node) -> None:
        type_only = any(child.type == "type" for child in node.children)
        require = next((c for c in node.named_children if c.type == "import_require_clause"), None)
        if require is not None:  # import x = require("./x")
            specifier = _string_value(require.child_by_field_name("source"))
            if specifier is not None:
                self._add(node, specifier, EdgeKind.TYPE if type_only else EdgeKind.STATIC, names=None)
            return
        specifier = _string_value(node.child_by_field_name("source"))
        if specifier is None:
            return
        clause = next((c for c in node.named_children if c.type == "import_clause"), None)
        if clause is None:
            self._add(node, specifier, EdgeKind.SIDE_EFFECT)
            return
        names: list[str] = []
        has_default = namespace = False
        all_types = True
        elements = 0
        for part in clause.named_children:
            if part.type == "identifier":
                has_default = True
                names.append("default")
                self.import_bindings[_text(part)] = (specifier, "default")
            elif part.type == "namespace_import":
                namespace = True
                local = next((c for c in part.named_children if c.type == "identifier"), None)
                if local is not None:
                    self.import_bindings[_text(local)] = (specifier, "*")
            elif part.type == "named_imports":
                for element in part.named_children:
                    if element.type != "import_specifier":
                        continue
                    elements += 1
                    imported = _name(element.child_by_field_name("name")) or ""
                    alias = element.child_by_field_name("alias")
                    names.append(imported)
                    self.import_bindings[_name(alias) or imported if alias else imported] = (
                        specifier,
                        imported,
                    )
                    if not any(child.type == "type" for child in element.children):
                        all_types = False
        all_types = all_types and not has_default and not namespace and elements > 0
        self._add(
            node,
            specifier,
            EdgeKind.TYPE if type_only or all_types else EdgeKind.STATIC,
            names=None if namespace else tuple(names),
        )

    def _export(self, node: tree_sitter.Node) -> None:
        specifier = _string_value(node.child_by_field_name("source"))
        clause = namespace = None
        has_default = has_equals = False
        for child in node.children:
            kind = child.type
            if kind == "export_clause":
                clause = child
            elif kind == "namespace_export":
                namespace = child
            elif kind == "default":
                has_default = True
            elif kind == "=":
                has_equals = True
        if specifier is not None:
            reexports: tuple[tuple[str, str], ...] | None = None
            if namespace is not None:
                exported = _name(namespace.named_children[-1]) if namespace.named_children else None
                reexports = (("*", exported or ""),)
            elif clause is not None:
                reexports = tuple(_export_pairs(clause))
            self._add(node, specifier, EdgeKind.RE_EXPORT, reexports=reexports)
            return
        if clause is not None:
            self.local_exports.append((node, list(_export_pairs(clause))))
            return
        if has_default or has_equals:  # export default ..., export = x
            self.exports.add("default")
            return
        declaration = node.child_by_field_name("declaration")
        if declaration is not None:
            self._declaration(node, declaration)

    def _declaration(self, statement: tree_sitter.Node, declaration: tree_sitter.Node) -> None:
        kind = declaration.type
        if kind == "ambient_declaration":  # export declare const x / function f / namespace N
            for child in declaration.named_children:
                self._declaration(statement, child)
        elif kind in ("lexical_declaration", "variable_declaration"):
            names: list[str] = []
            for declarator in declaration.named_children:
                if declarator.type == "variable_declarator":
                    name = declarator.child_by_field_name("name")
                    if name is not None:
                        _binding_names(name, names)
            self.exports.update(names)
        elif kind in _NAMED_DECLARATIONS:
            name = declaration.child_by_field_name("name")
            if name is not None and name.type != "string":
                self.exports.add(_text(name))
        elif kind == "import_alias":  # export import A = N.B; export import x = require("./x")
            alias = next((c for c in declaration.named_children if c.type == "identifier"), None)
            if alias is not None:
                self.exports.add(_text(alias))
        elif kind == "import_statement":
            self._import(declaration)

    def _calls(self) -> None:
        """`import(...)` (an expression or a type) and `require(...)` anywhere in the file.

        A full-tree query costs about as much as a third of the parse; the parser's own nodes at each place
        the keyword is written are found far faster, and they alone decide (strings and comments are not
        calls).
        """
        for keyword, is_import in ((b"import", True), (b"require", False)):
            found = self.source.find(keyword)
            while found >= 0:
                start, end = found, found + len(keyword)
                found = self.source.find(keyword, end)
                callee = self.root.named_descendant_for_byte_range(start, end)
                if callee is None or callee.start_byte != start or callee.end_byte != end:
                    continue  # part of a longer word, a string or a comment
                if callee.type != ("import" if is_import else "identifier"):
                    continue
                call = callee.parent
                if call is None or call.type != "call_expression":
                    continue
                function = call.child_by_field_name("function")
                if function is None or function.id != callee.id:
                    continue
                arguments = call.child_by_field_name("arguments")
                values = (
                    [] if arguments is None else [a for a in arguments.named_children if a.type != "comment"]
                )
                if is_import:
                    self._dynamic(call, values)
                elif len(values) == 1:
                    literal = _string_value(values[0])
                    if literal is not None:
                        self._add(call, literal, EdgeKind.REQUIRE)
                    else:
                        self._add(call, None, EdgeKind.REQUIRE, text=_text(values[0]))

    def _dynamic(self, call: tree_sitter.Node, values: list[tree_sitter.Node]) -> None:
        argument = values[0] if values else None
        literal = _string_value(argument)
        if _in_type(call):
            if literal is not None:
                self._add(call, literal, EdgeKind.TYPE, names=None)
            return
        if literal is not None:
            self._add(call, literal, EdgeKind.DYNAMIC)
        elif argument is not None and argument.type == "template_string":
            fragments = _template_fragments(argument)
            self._add(
                call,
                None,
                EdgeKind.DYNAMIC,
                template=(_unescape(fragments[0]), _unescape(fragments[-1])),
                text=_text(argument),
            )
        else:
            self._add(call, None, EdgeKind.DYNAMIC, text="" if argument is None else _text(argument))


def _template_fragments(template: tree_sitter.Node) -> list[str]:
    """The literal text before the first substitution, between substitutions, and after the last one."""
    fragments = [""]
    for child in template.children:
        if child.type == "template_substitution":
            fragments.append("")
        elif child.type in ("string_fragment", "escape_sequence"):
            fragments[-1] += _text(child)
    return fragments


def _in_type(call: tree_sitter.Node) -> bool:
    """Whether an `import("x")` call sits in a type (tsc's import type) rather than in an expression."""
    node = call.parent
    while node is not None and node.type in ("member_expression", "nested_type_identifier", "generic_type"):
        node = node.parent
    if node is None:
        return False
    return node.type in _TYPE_PARENTS or node.type.endswith("_type")


def _export_pairs(clause: tree_sitter.Node) -> Iterator[tuple[str, str]]:
    """(imported or local name, exported name) for each `a as b` of an export clause."""
    for element in clause.named_children:
        if element.type != "export_specifier":
            continue
        name = _name(element.child_by_field_name("name")) or ""
        alias = element.child_by_field_name("alias")
        yield name, (_name(alias) or name) if alias is not None else name


def _statements(container: tree_sitter.Node) -> Iterator[tree_sitter.Node]:
    """The statements of a program or block; those the parser could only wrap in an ERROR node included."""
    for child in container.named_children:
        if child.type == "ERROR":
            yield from _statements(child)
        else:
            yield child


def _only_unknown_type_parameter_modifiers(root: tree_sitter.Node) -> bool:
    """Whether every syntax error of the tree is a run of names inside a generic's type parameter list.

    That is how tree-sitter-typescript 0.23.2 reads variance annotations (`<in out T>`, valid TypeScript it
    does not know): the modifier, or the name after it, in an ERROR node, and the rest of the file as it is.
    Names in a type parameter list are no module reference and no export, so such a tree is a whole reading
    and the file need not go to the compiler (zod's three largest files are such files).
    """
    pending = [root]
    while pending:
        node = pending.pop()
        if node.is_missing:
            return False
        if node.type == "ERROR":
            parent = node.parent
            if parent is None or parent.type not in ("type_parameters", "type_parameter"):
                return False
            if any(child.type != "identifier" for child in node.children):
                return False
            continue
        pending.extend(child for child in node.children if child.has_error)
    return True


def read_source(file: str, source: bytes) -> SourceFacts:
    """The module references (with kind, line, imported names) and exported names of one source file."""
    tree = _PARSERS["tsx" if file.endswith(_TSX_SUFFIXES) else "typescript"].parse(source)
    facts = _FileReader(file, source, tree.root_node).read()
    whole = not tree.root_node.has_error or _only_unknown_type_parameter_modifiers(tree.root_node)
    return facts if whole else replace(facts, partial=True)
