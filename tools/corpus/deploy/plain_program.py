"""A plain CPython program (standard library only) holding the code shapes recovery must handle.

It runs unchanged under CPython 3.6 to 3.13 (no newer syntax at module level; newer constructs are
compiled from strings only where the running version has them).  It keeps alive: nested functions
and closures, decorated functions, classes with static/class methods, properties, inheritance and a
metaclass, a suspended generator, a suspended coroutine and async generator, lambdas,
comprehensions, big ints, complex/frozenset/bytes/tuple/unicode constants, default and keyword-only
arguments, exception handlers, one hot function (so 3.11+ quickens it), one loop-heavy function and
one function wide enough to need EXTENDED_ARG.  It also keeps instances whose attributes live in every
way CPython stores them (instance dict, 3.11+ managed dict and values, 3.13 inline values, a values
table turned into a dict, deleted attributes, more attributes than a shared-keys table holds), and
passes them to the ground truth with the names of their attributes.

Usage: ``python plain_program.py [--trace]``.  With ``--trace``, sys.settrace (and on 3.12+ a
sys.monitoring tool) is active before the workload runs a second time, so the code objects in
memory carry instrumented bytecode when the ground truth is written.
"""

import functools
import sys

import _groundtruth

HOT_CALLS = 200
LOOP_LENGTH = 5000


# --- constants of every kind -------------------------------------------------------------------


def constants_showcase():
    big = 123456789012345678901234567890123
    negative_big = -98765432109876543210987654321
    power = 2 ** 100
    number = 3.5 + 4j
    membership = 7 in {1, 2.5, "three", b"four", (5, 6), None}
    raw = b"\x00\xffzen bytes"
    nested = (1, "two", 3.0, (4, None, ...), -0.0, True)
    texts = ("caf\xe9", "\u03a9mega", "emoji \U0001f600", "")
    extremes = (1e300, 1e999, 0.1, -1e-300)
    return big, negative_big, power, number, membership, raw, nested, texts, extremes


def annotated(x: int, y: "str" = "default") -> bool:
    return bool(x) and bool(y)


def configure(host, port=8080, *, timeout=3.5, retries=None, **options):
    settings = {"host": host, "port": port, "timeout": timeout, "retries": retries}
    settings.update(options)
    return settings


# --- closures and decorators -------------------------------------------------------------------


def make_counter(start=0, *, step=1):
    count = start

    def increment(amount=step):
        nonlocal count
        count += amount
        return count

    return increment


def logged(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        wrapper.calls += 1
        return func(*args, **kwargs)

    wrapper.calls = 0
    return wrapper


@logged
def greet(name, punctuation="!"):
    return "hello " + name + punctuation


# --- classes -----------------------------------------------------------------------------------


class Shape:
    sides = 0

    def __init__(self, name):
        self.name = name

    def describe(self):
        return "%s with %d sides" % (self.name, self.sides)

    @staticmethod
    def unit():
        return 1

    @classmethod
    def create(cls, name):
        return cls(name)

    @property
    def label(self):
        return self.name.upper()


class Polygon(Shape):
    sides = 3

    def describe(self):
        return "polygon: " + super().describe()

    def area(self, *dims, scale=1.0, **extra):
        product = scale
        for d in dims:
            product *= d
        return product + len(extra)


class Square(Polygon):
    sides = 4

    def area(self, side=1.0):
        return super().area(side, side)


class Registry(type):
    """A metaclass, so one heap type's type is itself a heap type."""

    def __new__(mcls, name, bases, namespace):
        namespace.setdefault("registered", True)
        return super().__new__(mcls, name, bases, namespace)


class Plugin(metaclass=Registry):
    def ping(self):
        return "pong"


class PlainError(Exception):
    def __str__(self):
        return "plain error: " + super().__str__()


# --- generators, coroutines, lambdas, comprehensions -------------------------------------------


def fibonacci(limit):
    a, b = 0, 1
    while a < limit:
        yield a
        a, b = b, a + b


def squares(n):
    return (i * i for i in range(n))


class Ticket:
    """An awaitable that suspends exactly once."""

    def __await__(self):
        yield "suspended"
        return 42


async def fetch(value, scale=1):
    result = await Ticket()
    return (result + value) * scale


async def ticker(n):
    for i in range(n):
        await Ticket()
        yield i


def run_coroutine(coroutine):
    try:
        while True:
            coroutine.send(None)
    except StopIteration as done:
        return done.value


def comprehensions(n):
    evens = [i for i in range(n) if i % 2 == 0]
    unique = {i % 5 for i in range(n)}
    table = {i: str(i) for i in range(n)}
    grid = [[row * col for col in range(3)] for row in range(3)]
    ordered = sorted(table, key=lambda k: -k)
    return evens, unique, table, grid, ordered


SORT_KEY = lambda pair: (pair[1], pair[0])  # noqa: E731 (a module-level lambda on purpose)


# --- control flow, hot and loop-heavy code -----------------------------------------------------


def parse_all(values):
    results, attempts = [], 0
    for value in values:
        try:
            number = int(value)
        except (ValueError, TypeError) as exc:
            results.append(type(exc).__name__)
        else:
            results.append(number)
        finally:
            attempts += 1
    try:
        raise PlainError("checked")
    except PlainError as exc:
        results.append(str(exc))
    return results, attempts


def hot_add(a, b):
    return a + b * 2


def loop_sum(n):
    total = 0
    for i in range(n):
        if i % 3:
            total += i % 7
        else:
            total -= 1
    return total


def _define(name, source, label):
    """Compiles function ``name`` into this module (newer syntax, generated wide code); returns it."""
    exec(compile(source, "<plain_program:%s>" % label, "exec"), globals())
    return globals()[name]


_WIDE_SOURCE = "def wide(x):\n%s    return -1\n" % "".join(
    "    if x == %d:\n        return %d\n" % (i, i * i + 1000) for i in range(300)
)
wide = _define("wide", _WIDE_SOURCE, "wide")
if sys.version_info >= (3, 8):
    _define("positional_only", "def positional_only(a, b=2, /, c=3, *, d=4):\n    return a + b + c + d\n", "3.8")
if sys.version_info >= (3, 10):
    _define(
        "classify",
        "def classify(value):\n"
        "    match value:\n"
        "        case [x, y]:\n            return x + y\n"
        "        case {'k': v}:\n            return v\n"
        "        case _:\n            return None\n",
        "3.10",
    )
if sys.version_info >= (3, 11):
    _define(
        "grouped",
        "def grouped():\n"
        "    caught = []\n"
        "    try:\n        raise ExceptionGroup('g', [ValueError(1), KeyError(2)])\n"
        "    except* ValueError:\n        caught.append('value')\n"
        "    except* KeyError:\n        caught.append('key')\n"
        "    return caught\n",
        "3.11",
    )


# --- instances ---------------------------------------------------------------------------------
# Their attributes are never read through __dict__ or vars() (except where that is the point): on
# 3.11+ that would turn the values table into a dict.  The ground truth reads each named attribute.


class Record:
    kind = "record"  # a class attribute: not in any instance's attributes

    def __init__(self, ident, label):
        self.ident = ident
        self.label = label
        self.ratio = 0.25
        self.pair = (ident, label, -1.5)
        self.missing = None
        self.flag = True


RECORD_FIELDS = ("ident", "label", "ratio", "pair", "missing", "flag")


class DetailedRecord(Record):
    def __init__(self, ident, label):
        super().__init__(ident, label)
        self.detail = "d\xe9tail \u03a9"
        self.big = -(10 ** 25)


class WideRecord:
    """More attributes than a shared-keys table holds (30 on 3.11+): the rest go to a real dict."""

    def __init__(self, count):
        for i in range(count):
            setattr(self, "field_%02d" % i, i * i - 7)


class Slotted:
    __slots__ = ("left", "right")

    def __init__(self, left, right):
        self.left = left
        self.right = right


class TaggedList(list):
    """A builtin's subclass: its instances get a dict (3.11+: a managed dict, never inline values)."""


class TaggedTuple(tuple):
    """A variable-size builtin's subclass: the dict follows the items (a negative tp_dictoffset)."""


def make_instances():
    """[(instance, names of its attributes)]: every way this version may store them."""
    plain = Record(1, "one")
    detailed = DetailedRecord(2, "two")
    materialised = Record(3, "three")
    vars(materialised)  # 3.11+: the values become a dict that shares them
    materialised.extra = 3.5
    deleted = Record(4, "four")
    del deleted.ratio, deleted.missing
    wide = WideRecord(40)
    tagged = TaggedList([1, 2])
    tagged.tag = "tagged"
    tagged.size = 2
    tagged_tuple = TaggedTuple((1, 2, 3))
    tagged_tuple.tag = "tuple"
    return [
        (plain, RECORD_FIELDS),
        (detailed, RECORD_FIELDS + ("detail", "big")),
        (materialised, RECORD_FIELDS + ("extra",)),
        (deleted, ("ident", "label", "pair", "flag")),
        (wide, tuple("field_%02d" % i for i in range(40))),
        (Slotted("l", "r"), ()),  # no instance dict at all
        (tagged, ("tag", "size")),
        (tagged_tuple, ("tag",)),
    ]


# --- workload and tracing ----------------------------------------------------------------------

COUNTER = make_counter(10, step=2)
SUSPENDED_GENERATOR = fibonacci(10 ** 30)
SUSPENDED_SQUARES = squares(100)
PENDING_COROUTINE = fetch(1, scale=3)
PENDING_TICKER = ticker(5)
SHAPES = [Shape.create("blob"), Polygon("tri"), Square("sq"), Plugin()]
VERSION_SPECIFIC_CALLS = (("positional_only", (1,)), ("classify", ([1, 2],)), ("grouped", ()))
INSTANCES = make_instances()


def workload():
    """Runs every function at least once; hot_add and wide often enough to be quickened."""
    results = [constants_showcase(), annotated(1), configure("h", retries=2, extra=True), COUNTER()]
    results += [greet("zen"), Shape.unit(), SHAPES[0].label, SHAPES[1].describe(), SHAPES[2].area(2.0)]
    results += [SHAPES[3].ping(), comprehensions(10), parse_all(["1", "x", None]), loop_sum(LOOP_LENGTH)]
    results.append(sorted([(1, 2), (0, 3)], key=SORT_KEY))
    results.append(run_coroutine(fetch(2)))
    results.append(sum(hot_add(i, i) for i in range(HOT_CALLS)))
    results.append(sum(wide(i % 300) for i in range(HOT_CALLS)))
    for name, args in VERSION_SPECIFIC_CALLS:
        if name in globals():
            results.append(globals()[name](*args))
    return results


def _local_tracer(frame, event, arg):
    return _local_tracer


def _global_tracer(frame, event, arg):
    return _local_tracer


def _monitoring_callback(*args):
    return None


def install_tracing():
    """sys.settrace everywhere; on 3.12+ also a monitoring tool (lines, and instructions of hot_add)."""
    sys.settrace(_global_tracer)
    monitoring = getattr(sys, "monitoring", None)
    if monitoring is None:
        return
    events = monitoring.events
    tool = monitoring.PROFILER_ID
    monitoring.use_tool_id(tool, "zen-corpus")
    for event in (events.PY_START, events.LINE, events.INSTRUCTION):
        monitoring.register_callback(tool, event, _monitoring_callback)
    monitoring.set_events(tool, events.PY_START | events.LINE)
    monitoring.set_local_events(tool, hot_add.__code__, events.INSTRUCTION)


def main(argv):
    next(SUSPENDED_GENERATOR), next(SUSPENDED_GENERATOR), next(SUSPENDED_SQUARES)
    PENDING_COROUTINE.send(None)
    PENDING_TICKER.asend(None).send(None)
    workload()
    scenario = "plain"
    if "--trace" in argv:
        install_tracing()
        workload()
        scenario = "plain-traced"
    _groundtruth.write_and_wait(scenario, instances=INSTANCES)


if __name__ == "__main__":
    main(sys.argv[1:])
