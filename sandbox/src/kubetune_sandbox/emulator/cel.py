"""CEL as kube-apiserver evaluates `x-kubernetes-validations`: cel-python plus what our rules need.

cel-python 0.5 parses standard CEL and provides its value types and standard functions (size, matches,
startsWith, endsWith, contains, double, int, string, timestamp, ...). Kubernetes' CEL environment adds
cross-type numeric comparisons and heterogeneous equality, which this module supplies, and extension
libraries (strings, lists, sets, URLs, quantities, optionals), which it does not: no rule of our CRDs uses
them (tests/emulator/test_cel_coverage.py checks), and a rule calling one fails to compile, naming it.
The module checks an expression when it is compiled (unknown functions and variables are compile errors, as in cel-go),
compiles it to Python closures (evaluation is ~20x faster than cel-python's interpreter and thread-safe),
and turns runtime failures into the error text kube-apiserver reports ("no such key: foo").

Only what is independent of schemas lives here; converting JSON to CEL values by schema is the
admission engine's job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import wraps
from typing import Any, NoReturn, cast

import celpy
import lark
import re2
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, base_functions, celbytes, celstr

__all__ = [
    "CelCompileError",
    "CelEvaluationError",
    "CelProgram",
    "MapList",
    "OpaqueValue",
    "SetList",
    "compile_cel",
    "format_go_float",
    "supported_functions",
]

# cel-python's environment is used only to parse expressions.
_ENVIRONMENT = celpy.Environment()
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # invalid patterns are reported as CEL errors, not printed on stderr


class CelCompileError(ValueError):
    """The expression would be refused by kube-apiserver when the CRD is written."""


class CelEvaluationError(Exception):
    """The expression failed at runtime; `str(error)` is the text kube-apiserver puts in the field error."""


# ---------------------------------------------------------------------------------------------------------
# Go-compatible number formatting (used in messages and by string(double))
# ---------------------------------------------------------------------------------------------------------


def format_go_float(value: float, *, json: bool = False) -> str:
    """Format a float as Go does: `%v`/`strconv.FormatFloat(f, 'g', -1, 64)` (1e+06, 123456, 1e-05) or,
    with json=True, as encoding/json writes it (1000000, 1e-7, 1e+21)."""
    value = float(value)  # celtypes.DoubleType refuses comparisons with plain numbers
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    # repr() gives the shortest digits that round-trip, exactly like Go's shortest formatting.
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(str(d) for d in digit_tuple)
    decimal_point = len(digits) + cast(int, exponent)
    exponent10 = decimal_point - 1
    prefix = "-" if sign else ""
    if json:
        # encoding/json: positional unless tiny or huge, and a one-digit exponent is not padded.
        use_exponent, exponent_width = abs(value) < 1e-6 or abs(value) >= 1e21, 1
    else:
        # %v switches to exponent form below 1e-4 and from 1e+06 on when printing the shortest form.
        use_exponent, exponent_width = exponent10 < -4 or exponent10 >= 6, 2
    if use_exponent:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exponent10 < 0 else '+'}{abs(exponent10):0{exponent_width}d}"
    if decimal_point <= 0:
        return f"{prefix}0.{'0' * -decimal_point}{digits}"
    if decimal_point >= len(digits):
        return prefix + digits + "0" * (decimal_point - len(digits))
    return f"{prefix}{digits[:decimal_point]}.{digits[decimal_point:]}"


# ---------------------------------------------------------------------------------------------------------
# Values Kubernetes' CEL has and cel-python lacks
# ---------------------------------------------------------------------------------------------------------


class SetList(celtypes.ListType):
    """A list with `x-kubernetes-list-type: set`: equality ignores order, as in Kubernetes."""

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, list):
            raise TypeError("no such overload")
        if len(self) != len(other):
            return False
        return all(any(values_equal(a, b) for b in other) for a in self) and all(
            any(values_equal(b, a) for a in self) for b in other
        )

    def __ne__(self, other: Any) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]


class MapList(celtypes.ListType):
    """A list with `x-kubernetes-list-type: map`: equal when the same keys carry equal items, in any order."""

    def __init__(self, items: Iterable[Any], key_names: Sequence[str]) -> None:
        super().__init__(items)
        self.key_names = tuple(key_names)

    def _by_key(self, items: Iterable[Any]) -> dict[tuple[Any, ...], Any]:
        keyed: dict[tuple[Any, ...], Any] = {}
        for item in items:
            if isinstance(item, Mapping):
                keyed[tuple(_hashable(item.get(name)) for name in self.key_names)] = item
        return keyed

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, list):
            raise TypeError("no such overload")
        if len(self) != len(other):
            return False
        mine, theirs = self._by_key(self), self._by_key(other)
        return mine.keys() == theirs.keys() and all(values_equal(mine[k], theirs[k]) for k in mine)

    def __ne__(self, other: Any) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


class OpaqueValue:
    """Data kept by `x-kubernetes-preserve-unknown-fields` without a schema: only equality is defined."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, OpaqueValue) and self.raw == other.raw

    def __ne__(self, other: Any) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"OpaqueValue({self.raw!r})"


_MISSING = object()


# ---------------------------------------------------------------------------------------------------------
# Helpers for the function library
# ---------------------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (celtypes.IntType, celtypes.UintType, celtypes.DoubleType))


def _native_number(value: Any) -> int | float:
    return float(value) if isinstance(value, float) else int(value)


def values_equal(left: Any, right: Any) -> bool:
    """CEL equality as Kubernetes evaluates it: numbers compare by value across int/uint/double,
    values of different types are unequal rather than an error."""
    if _is_number(left) and _is_number(right):
        return _native_number(left) == _native_number(right)
    try:
        return bool(left == right)
    except TypeError:
        return False


def _error(message: str) -> CELEvalError:
    return CELEvalError(message)


def _propagating(function: Callable[..., Any]) -> Callable[..., Any]:
    """Return the first error argument unchanged, as CEL functions do (cel-python checks only some paths)."""

    @wraps(function)
    def wrapper(*args: Any) -> Any:
        for arg in args:
            if isinstance(arg, CELEvalError):
                return arg
        return function(*args)

    return wrapper


def _require(condition: bool) -> None:
    """Signal a call with arguments of the wrong types; cel-python turns TypeError into 'no such overload'."""
    if not condition:
        raise TypeError("no such overload")


_REGEX_CACHE: dict[str, Any] = {}


def _regex(pattern: str) -> Any:
    compiled = _REGEX_CACHE.get(pattern)
    if compiled is None:
        try:
            compiled = re2.compile(pattern, _RE2_OPTIONS)
        except re2.error as error:
            raise _RegexError(f"error parsing regexp: {_decode(error)}") from None
        if len(_REGEX_CACHE) < 1024:
            _REGEX_CACHE[pattern] = compiled
    return compiled


class _RegexError(Exception):
    pass


def _decode(error: BaseException) -> str:
    text = error.args[0] if error.args else str(error)
    return text.decode() if isinstance(text, bytes) else str(text)


# ---------------------------------------------------------------------------------------------------------
# Operators: cross-type numeric comparisons and heterogeneous equality (Kubernetes enables both)
# ---------------------------------------------------------------------------------------------------------


def _comparison(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], Any]:
    @_propagating
    def operator(left: Any, right: Any) -> Any:
        if _is_number(left) and _is_number(right):
            return celtypes.BoolType(compare(_native_number(left), _native_number(right)))
        return celtypes.BoolType(compare(left, right))

    return operator


def _logical(operator: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """&& and || as in cel-go: when both sides fail, the left error is the result (not 'no such overload')."""

    def combine(left: Any, right: Any) -> Any:
        if isinstance(left, CELEvalError) and isinstance(right, CELEvalError):
            return left
        return operator(left, right)

    return combine


@_propagating
def _equal(left: Any, right: Any) -> Any:
    return celtypes.BoolType(values_equal(left, right))


@_propagating
def _not_equal(left: Any, right: Any) -> Any:
    return celtypes.BoolType(not values_equal(left, right))


@_propagating
def _in(item: Any, container: Any) -> Any:
    if isinstance(container, Mapping):
        return celtypes.BoolType(item in container)
    _require(isinstance(container, list))
    return celtypes.BoolType(any(values_equal(item, element) for element in container))


@_propagating
def _to_string(value: Any) -> Any:
    if isinstance(value, celtypes.BoolType):
        return celtypes.StringType("true" if value else "false")
    if isinstance(value, celtypes.DoubleType):
        return celtypes.StringType(format_go_float(value))
    if isinstance(value, (celtypes.IntType, celtypes.UintType)):
        return celtypes.StringType(str(int(value)))
    return celtypes.StringType(value)


@_propagating
def _matches(text: Any, pattern: Any) -> Any:
    _require(isinstance(text, str) and isinstance(pattern, str))
    try:
        return celtypes.BoolType(_regex(pattern).search(text) is not None)
    except _RegexError as error:
        return _error(str(error))


@_propagating
def _size(value: Any) -> Any:
    _require(isinstance(value, (str, bytes, list, Mapping)))
    return celtypes.IntType(len(value))


# ---------------------------------------------------------------------------------------------------------
# The function table handed to cel-python
# ---------------------------------------------------------------------------------------------------------

_EXTENSIONS: dict[str, Callable[..., Any]] = {
    # operators
    "_<_": _comparison(lambda a, b: a < b),
    "_<=_": _comparison(lambda a, b: a <= b),
    "_>_": _comparison(lambda a, b: a > b),
    "_>=_": _comparison(lambda a, b: a >= b),
    "_==_": _equal,
    "_!=_": _not_equal,
    "_in_": _in,
    "_&&_": _logical(celtypes.logical_and),
    "_||_": _logical(celtypes.logical_or),
    # standard functions cel-python gets slightly wrong for Kubernetes
    "string": _to_string,
    "matches": _matches,
    "size": _size,
}


# ---------------------------------------------------------------------------------------------------------
# Compiling and evaluating
# ---------------------------------------------------------------------------------------------------------
#
# cel-python parses; evaluation does not use its tree-walking interpreter (about 1 ms per rule, too slow for
# CRDs with dozens of rules) nor its transpiler (it keeps state in module globals, unsafe across threads).
# Instead the parse tree is compiled once into nested Python closures over cel-python's value types and
# standard functions. Errors are values (CELEvalError), as in CEL, so `&&`/`||` can absorb them.

Closure = Callable[[dict[str, Any]], Any]

_TYPE_VALUES: dict[str, Any] = {
    "int": celtypes.IntType,
    "uint": celtypes.UintType,
    "double": celtypes.DoubleType,
    "bool": celtypes.BoolType,
    "string": celtypes.StringType,
    "bytes": celtypes.BytesType,
    "list": celtypes.ListType,
    "map": celtypes.MapType,
    "null_type": type(None),
    "type": celtypes.TypeType,
}
_BINARY_OPERATORS = {
    "relation_lt": "_<_",
    "relation_le": "_<=_",
    "relation_gt": "_>_",
    "relation_ge": "_>=_",
    "relation_eq": "_==_",
    "relation_ne": "_!=_",
    "relation_in": "_in_",
    "addition_add": "_+_",
    "addition_sub": "_-_",
    "multiplication_mul": "_*_",
    "multiplication_div": "_/_",
    "multiplication_mod": "_%_",
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {**base_functions, **_EXTENSIONS}
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
# Names that are not plain functions of the table: handled by the compiler itself.
_SPECIAL_FUNCTIONS = frozenset({"has", "dyn"})


def supported_functions() -> frozenset[str]:
    """Every function, method or macro name an expression may use."""
    names = {name for name in _FUNCTIONS if name[0].isalpha()} - {"null_type"}
    return frozenset(names | _MACROS | _SPECIAL_FUNCTIONS)


_FUNCTION_NAMES = supported_functions()


@dataclass(frozen=True, slots=True)
class FieldSelection:
    """`self.spec.replicas` in an expression: the variable, the selected names, and where the first one is."""

    variable: str
    names: tuple[str, ...]
    line: int
    column: int


@dataclass(frozen=True, eq=False)
class CelProgram:
    """A compiled expression, ready to evaluate many times (and from several threads)."""

    source: str
    closure: Closure
    variables: frozenset[str]
    selections: tuple[FieldSelection, ...]
    functions: frozenset[str]  # every function, method and macro the expression calls

    @property
    def uses_old_self(self) -> bool:
        return "oldSelf" in self.variables

    def evaluate(self, variables: Mapping[str, Any]) -> Any:
        """The expression's value; raise CelEvaluationError with kube-apiserver's wording on failure."""
        try:
            value = self.closure(dict(variables))
        except CelEvaluationError:
            raise
        except Exception as error:  # a bug here or in cel-python: still a field error, never a crash
            raise CelEvaluationError(f"internal error: {type(error).__name__}: {error}") from None
        if isinstance(value, CELEvalError):
            raise CelEvaluationError(describe_error(value))
        return value


def compile_cel(source: str, variables: Iterable[str] = ("self", "oldSelf")) -> CelProgram:
    """Parse, check and compile an expression; raise CelCompileError with a cel-go-like message."""
    try:
        tree = _ENVIRONMENT.compile(source)
    except CELParseError as error:
        line, column = getattr(error, "line", None) or 1, getattr(error, "column", None) or 1
        raise CelCompileError(
            f"ERROR: <input>:{line}:{column}: Syntax error: {_syntax_detail(error)}"
        ) from None
    compiler = _Compiler(frozenset(variables))
    closure = compiler.compile(tree, frozenset())
    return CelProgram(
        source,
        closure,
        frozenset(compiler.used_variables),
        tuple(compiler.selections),
        frozenset(compiler.functions),
    )


def _syntax_detail(error: BaseException) -> str:
    """cel-go's wording for the lark error behind a CELParseError."""
    cause = error.__context__
    if isinstance(cause, lark.exceptions.UnexpectedToken):
        return f"mismatched input '{cause.token.value or '<EOF>'}'"
    if isinstance(cause, lark.exceptions.UnexpectedCharacters):
        return f"token recognition error at: '{cause.char}'"
    return "invalid syntax"


def _call(function: Callable[..., Any], args: Sequence[Any]) -> Any:
    """Apply a CEL function: strict in its arguments, Python exceptions become CEL errors."""
    for arg in args:
        if isinstance(arg, CELEvalError):
            return arg
    try:
        result = function(*args)
    except (TypeError, AttributeError) as error:
        return CELEvalError("no such overload", type(error), error.args)
    except (ValueError, OverflowError) as error:
        return CELEvalError("return error for overflow", ValueError, error.args)
    except ZeroDivisionError as error:
        return CELEvalError("divide by zero", ZeroDivisionError, error.args)
    except KeyError as error:
        return CELEvalError("no such key", KeyError, error.args)
    except IndexError as error:
        return CELEvalError("invalid_argument", IndexError, error.args)
    return _as_cel(result)


def _as_cel(value: Any) -> Any:
    """Python operators on CEL values sometimes return plain Python values (list + list); retype them."""
    if isinstance(value, bool) or value is None or type(value).__module__ != "builtins":
        return value
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, list):
        return celtypes.ListType(value)
    return value


def _is_true(value: Any) -> bool:
    return isinstance(value, (bool, celtypes.BoolType)) and bool(value)


def _is_false(value: Any) -> bool:
    return isinstance(value, (bool, celtypes.BoolType)) and not bool(value)


class _Compiler:
    """Turns a cel-python parse tree into closures, checking names as cel-go does when compiling.

    It records the variables used (a rule using `oldSelf` is a transition rule) and every `self.a.b`
    selection so that the caller can check the names against the schema, as cel-go's type checker does.
    """

    def __init__(self, variables: frozenset[str]) -> None:
        self.variables = variables
        self.used_variables: set[str] = set()
        self.selections: list[FieldSelection] = []
        self.functions: set[str] = set()

    def fail(self, token: Any, message: str) -> NoReturn:
        line, column = getattr(token, "line", 1) or 1, getattr(token, "column", 1) or 1
        raise CelCompileError(f"ERROR: <input>:{line}:{column}: {message}")

    def compile(self, node: Any, bound: frozenset[str]) -> Closure:
        kind = node.data
        children = node.children
        if len(children) == 1 and isinstance(children[0], lark.Tree) and kind in _PASS_THROUGH:
            return self.compile(children[0], bound)
        method = getattr(self, f"_{kind}", None)
        if method is None:
            self.fail(node.meta if hasattr(node, "meta") else None, f"unsupported expression: {kind}")
        return cast(Closure, method(node, bound))

    # Operators -------------------------------------------------------------------------------------------

    def _expr(self, node: Any, bound: frozenset[str]) -> Closure:
        condition, when_true, when_false = (self.compile(c, bound) for c in node.children)

        def conditional(env: dict[str, Any]) -> Any:
            test = condition(env)
            if isinstance(test, CELEvalError):
                return test
            if not isinstance(test, (bool, celtypes.BoolType)):
                return CELEvalError("no such overload")
            return when_true(env) if test else when_false(env)

        return conditional

    def _conditionalor(self, node: Any, bound: frozenset[str]) -> Closure:
        left, right = (self.compile(c, bound) for c in node.children)

        def either(env: dict[str, Any]) -> Any:
            first = left(env)
            if _is_true(first):
                return celtypes.BoolType(True)
            second = right(env)
            if _is_true(second):
                return celtypes.BoolType(True)
            if _is_false(first) and _is_false(second):
                return celtypes.BoolType(False)
            # Errors are absorbed only by a true operand, as in CEL; the left error wins.
            for side in (first, second):
                if isinstance(side, CELEvalError):
                    return side
            return CELEvalError("no such overload")

        return either

    def _conditionaland(self, node: Any, bound: frozenset[str]) -> Closure:
        left, right = (self.compile(c, bound) for c in node.children)

        def both(env: dict[str, Any]) -> Any:
            first = left(env)
            if _is_false(first):
                return celtypes.BoolType(False)
            second = right(env)
            if _is_false(second):
                return celtypes.BoolType(False)
            if _is_true(first) and _is_true(second):
                return celtypes.BoolType(True)
            for side in (first, second):
                if isinstance(side, CELEvalError):
                    return side
            return CELEvalError("no such overload")

        return both

    def _binary(self, node: Any, bound: frozenset[str]) -> Closure:
        operator_node, right_node = node.children
        function = _FUNCTIONS[_BINARY_OPERATORS[operator_node.data]]
        left = self.compile(operator_node.children[0], bound)
        right = self.compile(right_node, bound)
        return lambda env: _call(function, (left(env), right(env)))

    _relation = _addition = _multiplication = _binary

    def _unary(self, node: Any, bound: frozenset[str]) -> Closure:
        operator_node, operand_node = node.children
        function = _FUNCTIONS["!_" if operator_node.data == "unary_not" else "-_"]
        operand = self.compile(operand_node, bound)
        return lambda env: _call(function, (operand(env),))

    # Members ---------------------------------------------------------------------------------------------

    def _member_dot(self, node: Any, bound: frozenset[str]) -> Closure:
        target_node, name_token = node.children
        self._record_selection(node)
        target = self.compile(target_node, bound)
        name = celtypes.StringType(name_token)

        def select(env: dict[str, Any]) -> Any:
            value = target(env)
            if isinstance(value, CELEvalError):
                return value
            if isinstance(value, Mapping):
                found = (
                    value.get(name, _MISSING)
                    if not isinstance(value, celtypes.MapType)
                    else _map_get(value, name)
                )
                return CELEvalError(f"no such key: {name}") if found is _MISSING else found
            return CELEvalError("no such overload")

        return select

    def _member_index(self, node: Any, bound: frozenset[str]) -> Closure:
        target, index = (self.compile(c, bound) for c in node.children)

        def item(env: dict[str, Any]) -> Any:
            container, key = target(env), index(env)
            for value in (container, key):
                if isinstance(value, CELEvalError):
                    return value
            if isinstance(container, list):
                if not isinstance(key, (celtypes.IntType, celtypes.UintType)):
                    return CELEvalError("no such overload")
                if not 0 <= key < len(container):
                    return CELEvalError(f"index out of bounds: {int(key)}")
                return container[key]
            if isinstance(container, Mapping):
                found = _map_get(container, key)
                return CELEvalError(f"no such key: {key}") if found is _MISSING else found
            return CELEvalError("no such overload")

        return item

    def _member_dot_arg(self, node: Any, bound: frozenset[str]) -> Closure:
        target_node, name = node.children[0], node.children[1]
        argument_nodes = node.children[2].children if len(node.children) > 2 else []
        self.functions.add(str(name))
        if name in _MACROS:
            return self._macro(str(name), name, target_node, argument_nodes, bound)
        if name not in _FUNCTION_NAMES or name in _SPECIAL_FUNCTIONS:
            self.fail(name, f"undeclared reference to '{name}' (in container '')")
        function = _FUNCTIONS[name]
        target = self.compile(target_node, bound)
        arguments = [self.compile(a, bound) for a in argument_nodes]
        return lambda env: _call(function, (target(env), *(a(env) for a in arguments)))

    def _member_object(self, node: Any, bound: frozenset[str]) -> Closure:
        self.fail(node.meta, "message construction is not supported in validation rules")

    # Primaries -------------------------------------------------------------------------------------------

    def _ident(self, node: Any, bound: frozenset[str]) -> Closure:
        name = str(node.children[0])
        if name in bound or name in self.variables:
            if name not in bound:
                self.used_variables.add(name)

            def variable(env: dict[str, Any]) -> Any:
                value = env.get(name, _MISSING)
                return CELEvalError(f"undeclared reference to '{name}'") if value is _MISSING else value

            return variable
        if name in _TYPE_VALUES:
            type_value = _TYPE_VALUES[name]
            return lambda env: type_value
        self.fail(node.children[0], f"undeclared reference to '{name}' (in container '')")

    def _ident_arg(self, node: Any, bound: frozenset[str]) -> Closure:
        name = node.children[0]
        argument_nodes = node.children[1].children if len(node.children) > 1 else []
        self.functions.add(str(name))
        if name == "has":
            return self._has(name, argument_nodes, bound)
        arguments = [self.compile(a, bound) for a in argument_nodes]
        if name == "dyn" and len(arguments) == 1:
            return arguments[0]
        if name not in _FUNCTION_NAMES or name in _SPECIAL_FUNCTIONS:
            self.fail(name, f"undeclared reference to '{name}' (in container '')")
        function = _FUNCTIONS[name]
        return lambda env: _call(function, [a(env) for a in arguments])

    def _has(self, token: Any, argument_nodes: Sequence[Any], bound: frozenset[str]) -> Closure:
        selection = _essential(argument_nodes[0]) if len(argument_nodes) == 1 else None
        if not (isinstance(selection, lark.Tree) and selection.data == "member_dot"):
            self.fail(token, "invalid argument to has() macro")
        self._record_selection(selection)
        target = self.compile(selection.children[0], bound)
        name = celtypes.StringType(str(selection.children[1]))

        def has(env: dict[str, Any]) -> Any:
            value = target(env)
            if isinstance(value, CELEvalError):
                return value
            if isinstance(value, Mapping):
                return celtypes.BoolType(_map_get(value, name) is not _MISSING)
            return CELEvalError("no such overload")

        return has

    def _literal(self, node: Any, bound: frozenset[str]) -> Closure:
        token = node.children[0]
        value: Any
        try:
            if token.type == "FLOAT_LIT":
                value = celtypes.DoubleType(token.value)
            elif token.type == "INT_LIT":
                value = celtypes.IntType(token.value)
            elif token.type == "UINT_LIT":
                value = celtypes.UintType(token.value[:-1])
            elif token.type in ("MLSTRING_LIT", "STRING_LIT"):
                value = celstr(token)
            elif token.type == "BYTES_LIT":
                value = celbytes(token)
            elif token.type == "BOOL_LIT":
                value = celtypes.BoolType(token.value == "true")
            else:
                value = None
        except ValueError:
            self.fail(token, f"invalid literal {token.value}")
        return lambda env: value

    def _paren_expr(self, node: Any, bound: frozenset[str]) -> Closure:
        return self.compile(node.children[0], bound)

    def _list_lit(self, node: Any, bound: frozenset[str]) -> Closure:
        elements = [self.compile(c, bound) for c in (node.children[0].children if node.children else [])]

        def make_list(env: dict[str, Any]) -> Any:
            values = [e(env) for e in elements]
            for value in values:
                if isinstance(value, CELEvalError):
                    return value
            return celtypes.ListType(values)

        return make_list

    def _map_lit(self, node: Any, bound: frozenset[str]) -> Closure:
        parts = [self.compile(c, bound) for c in (node.children[0].children if node.children else [])]
        pairs = list(zip(parts[0::2], parts[1::2], strict=True))

        def make_map(env: dict[str, Any]) -> Any:
            result = celtypes.MapType()
            for key_closure, value_closure in pairs:
                key, value = key_closure(env), value_closure(env)
                for part in (key, value):
                    if isinstance(part, CELEvalError):
                        return part
                if not celtypes.MapType.valid_key_type(key):
                    return CELEvalError("unsupported key type")
                if key in result:
                    return CELEvalError(f"Failed with repeated key: {key}")
                result[key] = value
            return result

        return make_map

    def _dot_ident(self, node: Any, bound: frozenset[str]) -> Closure:
        self.fail(node.children[0], f"undeclared reference to '.{node.children[0]}' (in container '')")

    _dot_ident_arg = _dot_ident

    # Macros ----------------------------------------------------------------------------------------------

    def _macro(
        self, name: str, token: Any, target_node: Any, argument_nodes: Sequence[Any], bound: frozenset[str]
    ) -> Closure:
        variable = _plain_identifier(argument_nodes[0]) if argument_nodes else None
        if len(argument_nodes) != 2 or variable is None:
            # Two-variable comprehensions and map(x, predicate, expression) are not available.
            self.fail(
                token, f"unsupported form of the {name}() macro: only {name}(x, expression) is supported"
            )
        target = self.compile(target_node, bound)
        body = self.compile(argument_nodes[1], bound | {variable})
        return _MACRO_BUILDERS[name](target, variable, body)

    def _record_selection(self, node: Any) -> None:
        names: list[Any] = []
        current: Any = node
        while isinstance(current, lark.Tree) and current.data == "member_dot":
            names.append(current.children[1])
            current = _essential(current.children[0])
        if (
            isinstance(current, lark.Tree)
            and current.data == "ident"
            and current.children[0] in self.variables
        ):
            names.reverse()
            first = names[0]
            line, column = getattr(first, "line", 1) or 1, getattr(first, "column", 1) or 1
            selection = FieldSelection(str(current.children[0]), tuple(str(n) for n in names), line, column)
            self.selections.append(selection)


_PASS_THROUGH = frozenset(
    {
        "expr",
        "conditionalor",
        "conditionaland",
        "relation",
        "addition",
        "multiplication",
        "unary",
        "member",
        "primary",
    }
)


def _map_get(container: Mapping[Any, Any], key: Any) -> Any:
    try:
        return container.get(key, _MISSING)
    except (TypeError, KeyError):  # an unhashable or invalid key is simply absent (MapType.get raises)
        return _MISSING


def _iterate(target: Any) -> Iterable[Any] | CELEvalError:
    if isinstance(target, CELEvalError):
        return target
    if isinstance(target, (list, Mapping)):
        return list(target)
    return CELEvalError("no such overload")


def _bind(env: dict[str, Any], variable: str, items: Iterable[Any], body: Closure) -> Iterator[Any]:
    """Evaluate `body` with `variable` bound to each item in turn, restoring the outer binding afterwards."""
    outer = env.get(variable, _MISSING)
    try:
        for item in items:
            env[variable] = item
            yield item, body(env)
    finally:
        if outer is _MISSING:
            env.pop(variable, None)
        else:
            env[variable] = outer


def _all_macro(target: Closure, variable: str, body: Closure) -> Closure:
    def all_items(env: dict[str, Any]) -> Any:
        items = _iterate(target(env))
        if isinstance(items, CELEvalError):
            return items
        error = None
        for _, result in _bind(env, variable, items, body):
            if _is_false(result):
                return celtypes.BoolType(False)
            if not _is_true(result):
                error = error or (
                    result if isinstance(result, CELEvalError) else CELEvalError("no such overload")
                )
        return error or celtypes.BoolType(True)

    return all_items


def _exists_macro(target: Closure, variable: str, body: Closure) -> Closure:
    def any_item(env: dict[str, Any]) -> Any:
        items = _iterate(target(env))
        if isinstance(items, CELEvalError):
            return items
        error = None
        for _, result in _bind(env, variable, items, body):
            if _is_true(result):
                return celtypes.BoolType(True)
            if not _is_false(result):
                error = error or (
                    result if isinstance(result, CELEvalError) else CELEvalError("no such overload")
                )
        return error or celtypes.BoolType(False)

    return any_item


def _exists_one_macro(target: Closure, variable: str, body: Closure) -> Closure:
    def one_item(env: dict[str, Any]) -> Any:
        items = _iterate(target(env))
        if isinstance(items, CELEvalError):
            return items
        count = 0
        for _, result in _bind(env, variable, items, body):
            if isinstance(result, CELEvalError):
                return result
            count += _is_true(result)
        return celtypes.BoolType(count == 1)

    return one_item


def _map_macro(target: Closure, variable: str, body: Closure) -> Closure:
    def map_items(env: dict[str, Any]) -> Any:
        items = _iterate(target(env))
        if isinstance(items, CELEvalError):
            return items
        results = []
        for _, result in _bind(env, variable, items, body):
            if isinstance(result, CELEvalError):
                return result
            results.append(result)
        return celtypes.ListType(results)

    return map_items


def _filter_macro(target: Closure, variable: str, body: Closure) -> Closure:
    def filter_items(env: dict[str, Any]) -> Any:
        items = _iterate(target(env))
        if isinstance(items, CELEvalError):
            return items
        kept = []
        for item, result in _bind(env, variable, items, body):
            if isinstance(result, CELEvalError):
                return result
            if not isinstance(result, (bool, celtypes.BoolType)):
                return CELEvalError("no such overload")
            if result:
                kept.append(item)
        return celtypes.ListType(kept)

    return filter_items


_MACRO_BUILDERS: dict[str, Callable[[Closure, str, Closure], Closure]] = {
    "all": _all_macro,
    "exists": _exists_macro,
    "exists_one": _exists_one_macro,
    "map": _map_macro,
    "filter": _filter_macro,
}


def _essential(node: Any) -> Any:
    """Skip the single-child wrappers the grammar puts around every operand (expr → … → member → primary)."""
    while isinstance(node, lark.Tree) and len(node.children) == 1 and isinstance(node.children[0], lark.Tree):
        if node.data not in _PASS_THROUGH:
            break
        node = node.children[0]
    return node


def _plain_identifier(node: Any) -> str | None:
    essential = _essential(node)
    if isinstance(essential, lark.Tree) and essential.data == "ident":
        return str(essential.children[0])
    return None


# ---------------------------------------------------------------------------------------------------------
# Error text
# ---------------------------------------------------------------------------------------------------------

_CEL_TYPE_REPR = re.compile(r"\b[A-Z][a-z]+Type\((.*?)\)")
_ACTIVATION_SUFFIX = re.compile(r"\s*\(in (activation|container) .*$", re.DOTALL)


def describe_error(error: CELEvalError) -> str:
    """cel-go's wording for a runtime failure, which kube-apiserver copies into the field error."""
    args = error.args
    message = str(args[0]) if args else "evaluation error"
    cause = args[1] if len(args) > 1 else None
    details = args[2] if len(args) > 2 else ()
    if message.startswith("no such member in mapping: "):
        return "no such key: " + message.removeprefix("no such member in mapping: ").strip("'\"")
    if message == "no such key":
        key = details[0] if isinstance(details, tuple) and details else ""
        return f"no such key: {key}"
    if cause is ZeroDivisionError:
        return "division by zero"
    if cause is IndexError or message == "invalid_argument":
        return "index out of bounds"
    if message == "return error for overflow":
        text = " ".join(str(d) for d in details) if isinstance(details, tuple) else str(details)
        if "overflow" in text:
            return "integer overflow"
        return "type conversion error: " + _CEL_TYPE_REPR.sub(r"\1", text)
    if "no matching overload" in message or message.startswith(("no such overload", "unsupported key type")):
        return "no such overload"
    if message.startswith("undeclared reference to"):
        return _ACTIVATION_SUFFIX.sub("", message)
    return message
