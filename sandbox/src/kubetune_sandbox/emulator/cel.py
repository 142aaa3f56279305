"""CEL as kube-apiserver evaluates `x-kubernetes-validations`: cel-python plus what our rules need.

cel-python 0.5 parses and evaluates standard CEL (size, matches, startsWith, endsWith, contains, double,
int, string, the macros, ...). Kubernetes' CEL adds cross-type numeric comparisons and heterogeneous
equality, supplied here, and extension libraries (strings, lists, sets, URLs, quantities, optionals), which
are not: no rule of our CRDs uses them (tests/emulator/test_cel_coverage.py checks), and a rule calling one
fails to compile, naming it, as cel-go's checker refuses unknown functions and variables. Converting JSON to
CEL values by schema is the admission engine's job.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import wraps
from typing import Any, NoReturn, cast

import celpy
import lark
import re2
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, base_functions

__all__ = [
    "CelCompileError",
    "CelEvaluationError",
    "CelProgram",
    "SetList",
    "compile_cel",
    "compile_re2",
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


# ----------------------------------- Go-compatible number formatting (used in messages and by string(double))
def format_go_float(value: float) -> str:
    """Format a float as Go's `%v` does (`strconv.FormatFloat(f, 'g', -1, 64)`: 1e+06, 123456, 1e-05)."""
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
    if exponent10 < -4 or exponent10 >= 6:  # %v's exponent form, for the shortest digits
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exponent10 < 0 else '+'}{abs(exponent10):02d}"
    if decimal_point <= 0:
        return f"{prefix}0.{'0' * -decimal_point}{digits}"
    if decimal_point >= len(digits):
        return prefix + digits + "0" * (decimal_point - len(digits))
    return f"{prefix}{digits[:decimal_point]}.{digits[decimal_point:]}"


# ------------------------------------------------------------ Values Kubernetes' CEL has and cel-python lacks
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


# --------------------------------------------------------------------------- Helpers for the function library
def _is_number(value: Any) -> bool:
    return isinstance(value, (celtypes.IntType, celtypes.UintType, celtypes.DoubleType))


def _native_number(value: Any) -> int | float:
    return float(value) if isinstance(value, float) else int(value)


def values_equal(left: Any, right: Any) -> bool:
    """CEL equality as Kubernetes evaluates it: numbers compare by value across int/uint/double,
    values of different types are unequal rather than an error."""
    # The name `string` is both a type and our string() function (cel-python resolves it to the function).
    left, right = (celtypes.StringType if v is _to_string else v for v in (left, right))
    if _is_number(left) and _is_number(right):
        return _native_number(left) == _native_number(right)
    try:
        return bool(left == right)
    except TypeError:
        return False


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


def compile_re2(pattern: str) -> Any:
    """A pattern as Go's regexp compiles it (RE2); ValueError with RE2's message when it is invalid."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as error:
        text = error.args[0] if error.args else str(error)
        raise ValueError(text.decode() if isinstance(text, bytes) else str(text)) from None


_regex = functools.lru_cache(maxsize=1024)(compile_re2)


# ------------- Operators: cross-type numeric comparisons and heterogeneous equality (Kubernetes enables both)
def _comparison(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], Any]:
    @_propagating
    def operator(left: Any, right: Any) -> Any:
        if _is_number(left) and _is_number(right):
            return celtypes.BoolType(compare(_native_number(left), _native_number(right)))
        return celtypes.BoolType(compare(left, right))

    return operator


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
def _index(container: Any, key: Any) -> Any:
    if isinstance(container, list):
        _require(isinstance(key, (celtypes.IntType, celtypes.UintType)))
        if not 0 <= key < len(container):
            return CELEvalError(f"index out of bounds: {int(key)}")
        return container[key]
    _require(isinstance(container, Mapping))
    try:
        return container[key]
    except (TypeError, KeyError):  # an unhashable or invalid key is simply absent
        return CELEvalError(f"no such key: {key}")


@_propagating
def _matches(text: Any, pattern: Any) -> Any:
    _require(isinstance(text, str) and isinstance(pattern, str))
    try:
        return celtypes.BoolType(_regex(pattern).search(text) is not None)
    except ValueError as error:
        return CELEvalError(f"error parsing regexp: {error}")


@_propagating
def _size(value: Any) -> Any:
    _require(isinstance(value, (str, bytes, list, Mapping)))
    return celtypes.IntType(len(value))


# -------------------------------------------------------------------- The function table handed to cel-python
_EXTENSIONS: dict[str, Callable[..., Any]] = {
    # operators
    "_<_": _comparison(lambda a, b: a < b),
    "_<=_": _comparison(lambda a, b: a <= b),
    "_>_": _comparison(lambda a, b: a > b),
    "_>=_": _comparison(lambda a, b: a >= b),
    "_==_": _equal,
    "_!=_": _not_equal,
    "_in_": _in,
    # standard functions cel-python gets slightly wrong for Kubernetes
    "string": _to_string,
    "_[_]": _index,
    "matches": _matches,
    "size": _size,
}


# ----------------------------------------------------------------------------------- Compiling and evaluating
# cel-python parses and evaluates (its interpreter, with the functions above in place of its own; a new
# evaluator per call, so programs are thread-safe). Compiling also walks the parse tree to do what cel-go's
# checker does when a CRD is written: unknown functions and variables are errors, and the `self.a.b`
# selections are recorded so that the admission engine can check them against the schema.

_FUNCTIONS: dict[str, Callable[..., Any]] = {**base_functions, **_EXTENSIONS}
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_SPECIAL_FUNCTIONS = frozenset({"has", "dyn"})  # macros of the form f(x), handled by cel-python itself
_TYPE_NAMES = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"}
)


def supported_functions() -> frozenset[str]:
    """Every function, method or macro name an expression may use."""
    names = {name for name in _FUNCTIONS if name[0].isalpha()} - {"null_type"}
    return frozenset(names | _MACROS | _SPECIAL_FUNCTIONS)


_FUNCTION_NAMES = supported_functions()


@dataclass(frozen=True, slots=True)
class FieldSelection:
    """`self.spec.replicas` in an expression: the selected names, and where the first one is."""

    names: tuple[str, ...]
    line: int
    column: int


@dataclass(frozen=True, eq=False)
class CelProgram:
    """A compiled expression, ready to evaluate many times (and from several threads)."""

    runner: Any  # celpy.Runner
    variables: frozenset[str]
    selections: tuple[FieldSelection, ...]
    functions: frozenset[str]  # every function, method and macro the expression calls

    @property
    def uses_old_self(self) -> bool:
        return "oldSelf" in self.variables

    def evaluate(self, variables: Mapping[str, Any]) -> Any:
        """The expression's value; raise CelEvaluationError with cel-python's text on failure."""
        try:
            value = self.runner.evaluate(dict(variables))
        except CELEvalError as error:
            value = error
        except Exception as error:  # a bug here or in cel-python: still a field error, never a crash
            raise CelEvaluationError(f"internal error: {type(error).__name__}: {error}") from None
        if isinstance(value, CELEvalError):
            raise CelEvaluationError(str(value.args[0]) if value.args else "evaluation error")
        return value


def compile_cel(source: str, variables: Iterable[str] = ("self", "oldSelf")) -> CelProgram:
    """Parse, check and compile an expression; raise CelCompileError with a cel-go-like message."""
    try:
        tree = _ENVIRONMENT.compile(source)
    except CELParseError as error:
        line, column = getattr(error, "line", None) or 1, getattr(error, "column", None) or 1
        raise CelCompileError(f"ERROR: <input>:{line}:{column}: Syntax error: {error}") from None
    checker = _Checker(frozenset(variables))
    checker.check(tree, frozenset())
    runner = _ENVIRONMENT.program(tree, functions=_FUNCTIONS)
    return CelProgram(
        runner,
        frozenset(checker.used_variables),
        tuple(checker.selections),
        frozenset(checker.functions),
    )


class _Checker:
    """Checks names in a cel-python parse tree as cel-go does when compiling, recording the variables used
    (a rule using `oldSelf` is a transition rule), the functions called and every `self.a.b` selection."""

    def __init__(self, variables: frozenset[str]) -> None:
        self.variables = variables
        self.used_variables: set[str] = set()
        self.selections: list[FieldSelection] = []
        self.functions: set[str] = set()

    def fail(self, token: Any, message: str) -> NoReturn:
        line, column = getattr(token, "line", 1) or 1, getattr(token, "column", 1) or 1
        raise CelCompileError(f"ERROR: <input>:{line}:{column}: {message}")

    def undeclared(self, token: Any, name: str) -> NoReturn:
        self.fail(token, f"undeclared reference to '{name}' (in container '')")

    def check(self, node: Any, bound: frozenset[str]) -> None:
        if not isinstance(node, lark.Tree):
            return
        kind, children = node.data, node.children
        if kind == "ident":
            name = str(children[0])
            if name in self.variables and name not in bound:
                self.used_variables.add(name)
            elif name not in bound and name not in _TYPE_NAMES:
                self.undeclared(children[0], name)
            return
        if kind in ("dot_ident", "dot_ident_arg"):
            self.undeclared(children[0], f".{children[0]}")
        if kind == "member_object":
            self.fail(node.meta, "message construction is not supported in validation rules")
        if kind == "member_dot":
            self._record_selection(node)
        elif kind == "ident_arg":
            token, arguments = children[0], children[1].children if len(children) > 1 else []
            self.functions.add(str(token))
            if token == "has":
                selection = _essential(arguments[0]) if len(arguments) == 1 else None
                if not (isinstance(selection, lark.Tree) and selection.data == "member_dot"):
                    self.fail(token, "invalid argument to has() macro")
            elif token not in _FUNCTION_NAMES:
                self.undeclared(token, str(token))
        elif kind == "member_dot_arg":
            target, token = children[0], children[1]
            arguments = children[2].children if len(children) > 2 else []
            self.functions.add(str(token))
            if token in _MACROS:
                variable = _plain_identifier(arguments[0]) if arguments else None
                if len(arguments) != 2 or variable is None:
                    # Two-variable comprehensions and map(x, predicate, expression) are not available.
                    message = (
                        f"unsupported form of the {token}() macro: only {token}(x, expression) is supported"
                    )
                    self.fail(token, message)
                self.check(target, bound)
                self.check(arguments[1], bound | {variable})
                return
            if token not in _FUNCTION_NAMES or token in _SPECIAL_FUNCTIONS:
                self.undeclared(token, str(token))
        for child in children:
            self.check(child, bound)

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
            self.selections.append(FieldSelection(tuple(str(n) for n in names), line, column))


_PASS_THROUGH = frozenset(
    {
        "expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication", "unary",
        "member", "primary",
    }
)  # fmt: skip


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
