"""Decide with ClickHouse's own parser that a statement is a plain SELECT over dataward's tables.

The query endpoint runs SQL from anyone who holds the token, in a process that may run as root.
``readonly=1`` stops writes and settings changes but not the ``file()`` scalar function, ``INTO
OUTFILE``, dictionaries or ``KILL``; and chDB runs every statement of a multi-statement text. So:

1. ``formatQuerySingleLine`` (the engine's parser, fed the text as a *parameter*, so the text itself
   is never executed) refuses multi-statements and yields one canonical statement;
2. ``EXPLAIN AST`` of that statement, with the query parameters substituted, gives the tree;
3. the tree is walked against allowlists: node kinds, table functions, databases and system
   tables, output formats; scalar functions against a denylist of everything that reaches files,
   the network, dictionaries, other tables' metadata or the server's configuration.

The canonical statement, not the client's text, is what then runs, so what was checked is what
executes. No regular expression over the SQL text decides anything here.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dwcore.sinks.errors import StoreError

ACCESS_DENIED = 497  # ClickHouse's own code; the endpoint maps it to HTTP 403

# The AST node kinds of SELECT syntax (EXPLAIN AST names). Anything else, e.g. ``Set`` (a
# SETTINGS clause) or ``ColumnsApplyTransformer`` (``* APPLY(f)`` hides a function name), is refused.
_NODE_KINDS = frozenset(
    {
        "SelectWithUnionQuery", "SelectIntersectExceptQuery", "SelectQuery", "ExpressionList",
        "Function", "Literal", "Identifier", "Asterisk", "QualifiedAsterisk",
        "ColumnsRegexpMatcher", "ColumnsListMatcher", "QualifiedColumnsRegexpMatcher",
        "QualifiedColumnsListMatcher", "ColumnsTransformerList", "ColumnsExceptTransformer",
        "ColumnsReplaceTransformer", "ColumnsReplaceTransformer::Replacement",
        "TablesInSelectQuery", "TablesInSelectQueryElement", "TableExpression", "TableIdentifier",
        "TableJoin", "ArrayJoin", "Subquery", "WithElement", "OrderByElement", "WindowDefinition",
        "WindowListElement", "InterpolateElement", "SampleRatio",
    }
)
# Table functions that only generate rows.
_TABLE_FUNCTIONS = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generate_series",
                              "generateseries"})
# System tables a client needs: clickhouse-connect reads system.settings when it connects.
SYSTEM_TABLES = frozenset({"one", "numbers", "numbers_mt", "zeros", "zeros_mt", "settings"})
# Scalar functions (lower case) that read files, call out (AI providers), read dictionaries or
# Join tables, leak server configuration or other tables' metadata, or only waste a thread.
_DENIED_FUNCTIONS = frozenset(
    {
        "file", "sleep", "sleepeachrow", "getserversetting", "getmergetreesetting", "globalvariable",
        "getmacro", "hascolumnintable", "demangle", "logtrace", "fuzzquery", "getclienthttpheader",
        "currentrequesturl", "filesystemavailable", "filesystemcapacity", "filesystemunreserved",
        "hasthreadfuzzer", "getserverport", "addresstoline", "addresstolinewithinlines",
        "addresstosymbol", "formatqueryfromjson",
    }
)
# Every table function that reads files, the network, other tables or runs code; also refused by
# name where a scalar call would do (``x IN url(...)``).
_IO_TABLE_FUNCTIONS = frozenset(
    name.lower()
    for name in (
        "ytsaurus hudiCluster deltaLakeCluster paimonAzureCluster paimonS3Cluster icebergAzureCluster "
        "icebergS3Cluster deltaLakeAzure paimonHDFS paimon icebergLocal deltaLakeAzureCluster icebergS3 iceberg "
        "hdfsCluster paimonLocal azureBlobStorageCluster icebergHDFSCluster s3Cluster hdfs oss gcs hudi cosn s3 "
        "azureBlobStorage prometheusQueryRange prometheusQuery timeSeriesSelector timeSeriesMetricFamilies "
        "timeSeriesTags timeSeriesSamples mergeTreeProjection paimonAzure loop postgresql clusterAllReplicas "
        "viewIfPermitted view jdbc paimonHDFSCluster mergeTreeCodecBlockCounts mergeTreeTextIndex "
        "mergeTreeAnalyzeIndexesUUID filesystem mergeTreeIndex icebergCluster icebergLocalCluster icebergAzure "
        "bigquery paimonS3 generateRandom dictionary fuzzQuery icebergHDFS merge url executable fuzzJSON "
        "deltaLakeS3 urlCluster deltaLakeS3Cluster deltaLakeLocal eval fileCluster file redis arrowstream "
        "mergeTreeAnalyzeIndexes input mysql viewExplain odbc mongodb deltaLake sqlite cluster python "
        "paimonCluster remoteSecure remote timeSeriesMetrics timeSeriesData"
    ).split()
)
_DENIED_PREFIXES = ("dict", "joinget", "ai", "catboost", "modelevaluate", "evalmlmethod", "__")
# Functions whose right-hand identifier names a table: ``x IN system.users``.
_IN_FUNCTIONS = frozenset(
    {"in", "notin", "globalin", "globalnotin", "nullin", "notnullin", "globalnullin", "globalnotnullin"}
)
# Output formats that need no schema or template file on the server.
_FORMAT_PREFIXES = ("TabSeparated", "TSV", "CSV", "JSON", "Pretty", "RowBinary")
_FORMATS = frozenset({"Native", "Vertical", "Markdown", "Values", "Parquet", "Arrow", "ArrowStream", "ORC",
                      "Null", "XML", "NDJSON", "LineAsString"})


class QueryRefused(StoreError):
    """The statement is not a plain SELECT over dataward's tables (HTTP 403, code 497)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Code: {ACCESS_DENIED}. DB::Exception: dataward: {reason}. (ACCESS_DENIED)",
                         code=ACCESS_DENIED)
        self.reason = reason


@dataclass
class Node:
    kind: str
    text: str  # the rest of the line after the kind: a name, "(alias x)", "(children n)"
    children: list[Node] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Function or table name: the text up to the first annotation."""
        return self.text.split(" (", 1)[0].strip()


def format_allowed(name: str) -> bool:
    return name in _FORMATS or name.startswith(_FORMAT_PREFIXES)


def parse_explain_ast(dump: str) -> Node:
    """The tree from EXPLAIN AST output in TSV: one node per row, depth = leading spaces."""
    root: Node | None = None
    stack: list[tuple[int, Node]] = []
    for raw in dump.splitlines():
        if not raw.strip():
            continue
        line = _tsv_unescape(raw)
        depth = len(line) - len(line.lstrip(" "))
        kind, _, rest = line.strip().partition(" ")
        node = Node(kind, rest)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            stack[-1][1].children.append(node)
        elif root is None:
            root = node
        else:
            raise QueryRefused("more than one statement")
        stack.append((depth, node))
    if root is None:
        raise QueryRefused("empty statement")
    return root


def _tsv_unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append({"t": "\t", "n": "\n", "\\": "\\", "'": "'"}.get(text[i + 1], text[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def check_tree(root: Node, database: str) -> set[str]:
    """Raise QueryRefused unless the tree is one plain SELECT over ``database`` (and a few system
    tables). Returns the names called like table functions that are not generators: each must be
    a parameterized view of ``database`` (``incident_events(incident = ...)``), which the caller
    checks against the engine's catalogue."""
    if root.kind != "SelectWithUnionQuery":
        raise QueryRefused(f"only SELECT is allowed, not {root.kind}")
    # The root holds the union list, then optional INTO OUTFILE (a Literal), FORMAT (an Identifier)
    # and SETTINGS (Set). Only FORMAT may follow.
    for extra in root.children[1:]:
        if extra.kind != "Identifier":
            raise QueryRefused("INTO OUTFILE and SETTINGS are not allowed")
        if not format_allowed(extra.name):
            raise QueryRefused(f"output format {extra.name} is not allowed")
    views: set[str] = set()
    _walk(root.children[0] if root.children else root, database, "", views)
    return views


def _walk(node: Node, database: str, parent: str, views: set[str]) -> None:
    if node.kind not in _NODE_KINDS:
        raise QueryRefused(f"{node.kind} is not allowed in a query")
    if node.kind == "TableIdentifier":
        _check_table(node.name, database)
    elif node.kind == "Function":
        name = node.name
        if parent == "TableExpression":
            if name.lower() in _IO_TABLE_FUNCTIONS or "." in name:
                raise QueryRefused(f"table function {name} is not allowed")
            if name.lower() not in _TABLE_FUNCTIONS:
                views.add(name)
        else:
            lower = name.lower()
            if lower in _DENIED_FUNCTIONS or lower in _IO_TABLE_FUNCTIONS or lower.startswith(_DENIED_PREFIXES):
                raise QueryRefused(f"function {name} is not allowed")
            if lower in _IN_FUNCTIONS:
                args = node.children[0].children if node.children else []
                for arg in args[1:]:
                    if arg.kind == "Identifier":
                        _check_table(arg.name, database)
    for child in node.children:
        _walk(child, database, node.kind, views)


def _check_table(name: str, database: str) -> None:
    if "." not in name:
        return  # resolved in the current database, which the endpoint pins to dataward's
    db, _, table = name.partition(".")
    if db == database:
        return
    if db == "system" and table in SYSTEM_TABLES:
        return
    raise QueryRefused(f"table {name} is outside the {database} database")


def _escape_param(text: str) -> str:
    """ClickHouse's escaped text form of a String parameter value (as in HTTP ``param_x``)."""
    return (text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
            .replace("\r", "\\r").replace("\0", "\\0"))


RunTsv = Callable[[str, Mapping[str, str]], bytes]


def vet(run_tsv: RunTsv, sql: str, params: Mapping[str, str], database: str) -> str:
    """The canonical single statement to execute, or QueryRefused / StoreError (syntax).

    ``run_tsv(sql, params)`` runs one statement on the engine and returns TSV output; params are in
    ClickHouse's escaped text form.
    """
    # The client's text travels as a parameter value: the engine parses it, never runs it.
    single = run_tsv("SELECT formatQuerySingleLine({dataward_sql:String})", {"dataward_sql": _escape_param(sql)})
    canonical = _tsv_unescape(single.decode("utf-8", errors="replace").rstrip("\n"))
    if not canonical.strip() or "\n" in canonical:
        raise QueryRefused("the statement could not be read as one query")
    dump = run_tsv(f"EXPLAIN AST {canonical}", params).decode("utf-8", errors="replace")
    views = check_tree(parse_explain_ast(dump), database)
    if views:
        found = run_tsv(
            "SELECT name FROM system.tables WHERE database = {db:String} AND engine = 'View' "
            "AND name IN {names:Array(String)}",
            {"db": _escape_param(database), "names": _escape_param(_array_literal(sorted(views)))},
        ).decode("utf-8", errors="replace").split()
        missing = views - set(found)
        if missing:
            raise QueryRefused(f"table function {sorted(missing)[0]} is not allowed")
    return canonical


def _array_literal(items: list[str]) -> str:
    return "[" + ",".join("'" + i.replace("\\", "\\\\").replace("'", "\\'") + "'" for i in items) + "]"
