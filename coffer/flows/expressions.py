"""A small, safe expression language for the computed values and checks of a flow.

Why not Python's ``eval`` or a general language: a flow definition is data an admin sends over
HTTP; it must never run code, never loop, never touch a float, and every way it can fail must be
found when the flow is registered, not when money moves. So the language has exactly what money
arithmetic needs and a type checker that runs at registration:

- numbers: decimal literals (``2.5``), a postfix percent (``2.5%`` is 0.025), ``+ - * /``,
  unary minus, parentheses, ``min(a, b, ...)``, ``max(...)``, and ``units(x)`` (an amount as a
  plain number, to convert it into another asset);
- comparisons ``< <= > >= == !=`` and ``and``, ``or``, ``not`` (for checks);
- names: the flow's parameters and the computed values defined before.

Types: an *amount* carries its asset (the asset reference of its parameter or computed value);
a *number* has none; a literal adapts to the other operand. Amounts add to amounts of the same
asset only, multiply and divide by numbers only; ``amount / amount`` is a number. A mistake is a
:class:`ExpressionError` naming the expression and what is wrong.

Method: arithmetic is exact on rationals (``fractions.Fraction``: two Python integers), so
``amount * 2.9%`` or ``amount / 3`` lose nothing; rounding happens only where a flow asks for it,
to the asset's scale, with a named mode (:func:`round_to_scale`). Sizes are bounded: the text,
the nesting depth, and the digits of every intermediate value.
"""

import re
from dataclasses import dataclass
from fractions import Fraction

expression_length_max = 512  # characters: a flow's formula, not a program
expression_depth_max = 32  # nesting of the parser's recursion
literal_digits_max = 40  # as the API's amounts
value_digits_max = 120  # numerator and denominator of any intermediate value (bounds the work)

rounding_modes = ("down", "up", "floor", "ceiling", "half_up", "half_down", "half_even")


class ExpressionError(ValueError):
    """The expression is malformed or ill-typed (at registration) or cannot be computed (at run)."""


# ---------------------------------------------------------------------------- syntax

_token = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|(<=|>=|==|!=|[-+*/%(),<>]))")


@dataclass(frozen=True)
class Number:
    value: Fraction


@dataclass(frozen=True)
class Name:
    name: str


@dataclass(frozen=True)
class Unary:
    op: str  # "-", "%", "not"
    operand: "Node"


@dataclass(frozen=True)
class Binary:
    op: str  # + - * / < <= > >= == != and or
    left: "Node"
    right: "Node"


@dataclass(frozen=True)
class Call:
    function: str  # min, max, units
    arguments: tuple["Node", ...]


Node = Number | Name | Unary | Binary | Call
functions = ("min", "max", "units")
_keywords = ("and", "or", "not")


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    stripped = text.rstrip()
    while position < len(stripped):
        match = _token.match(stripped, position)
        if match is None:
            raise ExpressionError(f"unexpected {stripped[position:].lstrip()[:10]!r}")
        tokens.append(match.group(match.lastindex or 0))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.position = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None:
            raise ExpressionError("the expression ends too early" if expected is None else f"expected {expected!r} at the end")
        if expected is not None and token != expected:
            raise ExpressionError(f"expected {expected!r}, found {token!r}")
        self.position += 1
        return token

    def nested(self) -> None:
        self.depth += 1
        if self.depth > expression_depth_max:
            raise ExpressionError(f"the expression nests deeper than {expression_depth_max}")

    def expression(self) -> Node:
        self.nested()
        node = self.conjunction()
        while self.peek() == "or":
            self.take()
            node = Binary("or", node, self.conjunction())
        self.depth -= 1
        return node

    def conjunction(self) -> Node:
        node = self.negation()
        while self.peek() == "and":
            self.take()
            node = Binary("and", node, self.negation())
        return node

    def negation(self) -> Node:
        if self.peek() == "not":
            self.take()
            self.nested()
            node = Unary("not", self.negation())
            self.depth -= 1
            return node
        return self.comparison()

    def comparison(self) -> Node:
        node = self.sum()
        if self.peek() in ("<", "<=", ">", ">=", "==", "!="):
            node = Binary(self.take(), node, self.sum())
            if self.peek() in ("<", "<=", ">", ">=", "==", "!="):
                raise ExpressionError("comparisons do not chain: use 'and'")
        return node

    def sum(self) -> Node:
        node = self.product()
        while self.peek() in ("+", "-"):
            node = Binary(self.take(), node, self.product())
        return node

    def product(self) -> Node:
        node = self.unary()
        while self.peek() in ("*", "/"):
            node = Binary(self.take(), node, self.unary())
        return node

    def unary(self) -> Node:
        if self.peek() == "-":
            self.take()
            self.nested()
            node = Unary("-", self.unary())
            self.depth -= 1
            return node
        node = self.primary()
        while self.peek() == "%":
            self.take()
            node = Unary("%", node)
        return node

    def primary(self) -> Node:
        token = self.take()
        if token == "(":
            node = self.expression()
            self.take(")")
            return node
        if token[0].isdigit():
            if len(token.replace(".", "")) > literal_digits_max:
                raise ExpressionError(f"a number has more than {literal_digits_max} digits")
            return Number(Fraction(token))
        if token[0].isalpha() or token[0] == "_":
            if token in _keywords:
                raise ExpressionError(f"{token!r} needs operands")
            if self.peek() == "(":
                if token not in functions:
                    raise ExpressionError(f"unknown function {token!r} (there are {', '.join(functions)})")
                self.take("(")
                arguments = [self.expression()]
                while self.peek() == ",":
                    self.take()
                    arguments.append(self.expression())
                self.take(")")
                return Call(token, tuple(arguments))
            return Name(token)
        raise ExpressionError(f"unexpected {token!r}")


def parse(text: str) -> Node:
    """The syntax tree of ``text`` (raises :class:`ExpressionError`)."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("an expression must be non-empty text")
    if len(text) > expression_length_max:
        raise ExpressionError(f"an expression is at most {expression_length_max} characters")
    parser = _Parser(text)
    node = parser.expression()
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected {parser.peek()!r}")
    return node


def unparse(node: Node) -> str:
    """A canonical spelling (fully parenthesized), used to name non-linear terms."""
    if isinstance(node, Number):
        return str(node.value)
    if isinstance(node, Name):
        return node.name
    if isinstance(node, Unary):
        return f"({unparse(node.operand)})%" if node.op == "%" else f"({node.op} {unparse(node.operand)})"
    if isinstance(node, Binary):
        return f"({unparse(node.left)} {node.op} {unparse(node.right)})"
    return f"{node.function}({', '.join(unparse(argument) for argument in node.arguments)})"


def names(node: Node) -> set[str]:
    if isinstance(node, Name):
        return {node.name}
    if isinstance(node, Unary):
        return names(node.operand)
    if isinstance(node, Binary):
        return names(node.left) | names(node.right)
    if isinstance(node, Call):
        return set().union(*(names(argument) for argument in node.arguments))
    return set()


# ---------------------------------------------------------------------------- types


@dataclass(frozen=True)
class Kind:
    """``amount`` (with ``asset``, the asset reference), ``number``, ``literal`` or ``bool``."""

    name: str
    asset: str | None = None

    def describe(self) -> str:
        return f"an amount of {self.asset}" if self.name == "amount" else f"a {self.name}"


NUMBER = Kind("number")
LITERAL = Kind("literal")
BOOL = Kind("bool")


def amount_kind(asset: str) -> Kind:
    return Kind("amount", asset)


def _numeric(kind: Kind) -> bool:
    return kind.name in ("number", "literal")


def _join(left: Kind, right: Kind, what: str) -> Kind:
    """The kind of ``left op right`` where both sides must be alike (+, -, min, max, comparisons)."""
    if left.name == "bool" or right.name == "bool":
        raise ExpressionError(f"{what} takes numbers or amounts, not a condition")
    if left.name == "literal":
        return right
    if right.name == "literal":
        return left
    if left.name == "amount" and right.name == "amount":
        if left.asset != right.asset:
            raise ExpressionError(f"{what} mixes an amount of {left.asset} and an amount of {right.asset}")
        return left
    if left.name != right.name:
        raise ExpressionError(f"{what} mixes {left.describe()} and {right.describe()} (units(x) turns an amount into a number)")
    return left


def check(node: Node, kinds: dict[str, Kind]) -> Kind:
    """The kind of ``node`` given the kinds of the names it may use; raises on any type error."""
    if isinstance(node, Number):
        return LITERAL
    if isinstance(node, Name):
        if node.name not in kinds:
            raise ExpressionError(f"unknown name {node.name!r}")
        return kinds[node.name]
    if isinstance(node, Unary):
        operand = check(node.operand, kinds)
        if node.op == "not":
            if operand != BOOL:
                raise ExpressionError("'not' takes a condition")
            return BOOL
        if operand == BOOL:
            raise ExpressionError(f"{node.op!r} takes a number or an amount")
        if node.op == "%" and operand.name == "amount":
            raise ExpressionError("a percent is of a number: write amount * 2%")
        return operand
    if isinstance(node, Call):
        argument_kinds = [check(argument, kinds) for argument in node.arguments]
        if node.function == "units":
            if len(argument_kinds) != 1 or argument_kinds[0].name != "amount":
                raise ExpressionError("units(x) takes one amount")
            return NUMBER
        if len(argument_kinds) < 2:
            raise ExpressionError(f"{node.function}() takes at least two values")
        kind = argument_kinds[0]
        for other in argument_kinds[1:]:
            kind = _join(kind, other, f"{node.function}()")
        return kind
    assert isinstance(node, Binary)
    left, right = check(node.left, kinds), check(node.right, kinds)
    op = node.op
    if op in ("and", "or"):
        if left != BOOL or right != BOOL:
            raise ExpressionError(f"{op!r} takes conditions")
        return BOOL
    if op in ("<", "<=", ">", ">=", "==", "!="):
        _join(left, right, f"comparison {op!r}")
        return BOOL
    if op in ("+", "-"):
        return _join(left, right, f"{op!r}")
    if left == BOOL or right == BOOL:
        raise ExpressionError(f"{op!r} takes numbers or amounts")
    if op == "*":
        if left.name == "amount" and right.name == "amount":
            raise ExpressionError("an amount times an amount is not money")
        if left.name == "amount" or right.name == "amount":
            return left if left.name == "amount" else right
        return NUMBER if NUMBER in (left, right) else LITERAL
    assert op == "/"
    if right.name == "amount":
        if left.name != "amount":
            raise ExpressionError("a number divided by an amount is not money")
        return NUMBER  # a ratio of two amounts
    if left.name == "amount":
        return left
    return NUMBER if NUMBER in (left, right) else LITERAL


# ---------------------------------------------------------------------------- values


def _bounded(value: Fraction) -> Fraction:
    if len(str(abs(value.numerator))) > value_digits_max or len(str(value.denominator)) > value_digits_max:
        raise ExpressionError(f"a value grew beyond {value_digits_max} digits")
    return value


def evaluate(node: Node, values: dict[str, Fraction | bool]) -> Fraction | bool:
    """The exact value of a checked expression (amounts in whole units of their asset)."""
    if isinstance(node, Number):
        return node.value
    if isinstance(node, Name):
        return values[node.name]
    if isinstance(node, Unary):
        operand = evaluate(node.operand, values)
        if node.op == "not":
            return not operand
        assert isinstance(operand, Fraction)
        return -operand if node.op == "-" else operand / 100
    if isinstance(node, Call):
        arguments = [evaluate(argument, values) for argument in node.arguments]
        if node.function == "units":
            return arguments[0]
        return min(arguments) if node.function == "min" else max(arguments)  # type: ignore[type-var]
    op = node.op
    if op == "and":
        return bool(evaluate(node.left, values)) and bool(evaluate(node.right, values))
    if op == "or":
        return bool(evaluate(node.left, values)) or bool(evaluate(node.right, values))
    left, right = evaluate(node.left, values), evaluate(node.right, values)
    assert isinstance(left, Fraction) and isinstance(right, Fraction)
    if op == "+":
        return _bounded(left + right)
    if op == "-":
        return _bounded(left - right)
    if op == "*":
        return _bounded(left * right)
    if op == "/":
        if right == 0:
            raise ExpressionError(f"division by zero in {unparse(node)}")
        return _bounded(left / right)
    comparisons = {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right, "==": left == right}
    return comparisons.get(op, left != right)


def round_to_scale(value: Fraction, scale: int, mode: str) -> int:
    """``value`` (whole units) as an integer of minor units at ``scale``, rounded by ``mode``."""
    scaled = value * 10**scale
    quotient, remainder = divmod(scaled.numerator, scaled.denominator)  # floor division
    if remainder == 0:
        return quotient
    denominator = scaled.denominator
    negative = scaled < 0
    toward_zero = quotient + 1 if negative else quotient
    away = quotient if negative else quotient + 1
    if mode == "floor":
        return quotient
    if mode == "ceiling":
        return quotient + 1
    if mode == "down":
        return toward_zero
    if mode == "up":
        return away
    # Half modes: compare the distance to the lower neighbour (quotient) with one half.
    twice = 2 * remainder
    if twice < denominator:
        return quotient
    if twice > denominator:
        return quotient + 1
    if mode == "half_up":
        return away
    if mode == "half_down":
        return toward_zero
    assert mode == "half_even", mode
    return quotient if quotient % 2 == 0 else quotient + 1


# ---------------------------------------------------------------------------- linear forms

Linear = dict[str, Fraction]  # term -> coefficient; the term "" is the constant


def linear(node: Node, expand: dict[str, Node]) -> Linear:
    """``node`` as a sum of terms with rational coefficients, for the balance check.

    Names in ``expand`` (computed values that are exact sums) are replaced by their expression;
    any other name, and every non-linear part (min, max, a product of two names, ...), is one
    opaque term named by its canonical spelling.
    """
    if isinstance(node, Number):
        return {"": node.value}
    if isinstance(node, Name):
        if node.name in expand:
            return linear(expand[node.name], expand)
        return {node.name: Fraction(1)}
    if isinstance(node, Unary) and node.op in ("-", "%"):
        factor = Fraction(-1) if node.op == "-" else Fraction(1, 100)
        return {term: coefficient * factor for term, coefficient in linear(node.operand, expand).items()}
    if isinstance(node, Binary) and node.op in ("+", "-"):
        result = dict(linear(node.left, expand))
        sign = 1 if node.op == "+" else -1
        for term, coefficient in linear(node.right, expand).items():
            result[term] = result.get(term, Fraction(0)) + sign * coefficient
        return {term: coefficient for term, coefficient in result.items() if coefficient != 0}
    if isinstance(node, Binary) and node.op in ("*", "/"):
        left, right = linear(node.left, expand), linear(node.right, expand)
        if set(right) <= {""} and (node.op == "*" or right.get("", 0) != 0):
            constant = right.get("", Fraction(0))
            factor = constant if node.op == "*" else 1 / constant
            return {term: coefficient * factor for term, coefficient in left.items() if coefficient * factor != 0}
        if node.op == "*" and set(left) <= {""}:
            constant = left.get("", Fraction(0))
            return {term: coefficient * constant for term, coefficient in right.items() if coefficient * constant != 0}
    return {unparse(node): Fraction(1)}
