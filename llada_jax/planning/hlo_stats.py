"""Per-step collective traffic and HBM traffic of one chip, read from compiled HLO text.

A compiled SPMD program is the program of one chip. `hlo_step_stats(compiled.as_text(), n)`
walks it from the entry computation and counts what one step executes: an op inside a `while`
body counts once per trip (the trip count from XLA's `known_trip_count`, else from the loop
condition `i < N` with `i` starting at a constant), ops inside called computations (fusions,
calls, async starts) count once per call, and a `conditional` counts its costliest branch.

For each collective kind it gives executions per step, the bytes of its results (tuple results
summed: a combined all-reduce of 21 arrays moves all of them) and the bytes each chip sends and
receives over the links with ring algorithms (all-gather and all-to-all (n-1)/n of the result,
reduce-scatter (n-1) results, all-reduce 2 (n-1)/n, collective-permute the result; each sent
and received). HBM traffic is estimated as XLA's cost model does: operands plus results of every
op outside fusion bodies (tuples, parameters, bitcasts and collectives excluded), per execution.
"""

from __future__ import annotations

import math
import re
from typing import Any

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "ragged-all-to-all", "collective-broadcast")

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16, "token": 0}
# dtype[dims] with an optional layout {...}; the layout tells the memory space (S(n), n > 0: not HBM).
_ARRAY = re.compile(r"\b(pred|token|bf16|f8e\w+|[sufc]\d+)\[([\d,]*)\](\{[^{}]*\})?")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s")
_NOT_HBM = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional", "call",
            "after-all", "partition-id", "replica-id", "opt-barrier", "copy-start", "copy-done", "async-start",
            "async-update", "async-done", "call-start", "call-done", "custom-call-start", "custom-call-done",
            "add-dependency", "domain"}


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", text)


def array_bytes(type_str: str, hbm_only: bool = False) -> list[float]:
    """Bytes of each array in an HLO type, e.g. '(f32[8]{0}, /*index=5*/bf16[2,4]{1,0})' -> [32, 16].

    With `hbm_only`, arrays whose layout puts them in another memory space (`S(1)`...) count 0.
    """
    sizes = []
    for dtype, dims, layout in _ARRAY.findall(_strip_comments(type_str)):
        if hbm_only and layout and re.search(r"S\([1-9]\d*\)", layout):
            sizes.append(0.0)
            continue
        n = math.prod(int(d) for d in dims.split(",") if d)
        sizes.append(n * _DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else 4))
    return sizes


def split_top_level(text: str) -> list[str]:
    """Top-level comma-separated parts of a parenthesised list: '(a, (b, c), d)' -> ['a', '(b, c)', 'd']."""
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    if text[start:].strip():
        parts.append(text[start:].strip())
    return parts


def _operands_and_attrs(rest: str) -> tuple[str, str]:
    """'%a, %b), attr=...' (the text after 'op(') -> ('%a, %b', 'attr=...')."""
    depth = 1
    for i, ch in enumerate(rest):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return rest[:i], rest[i + 1:]
    return rest, ""


def parse_hlo(text: str) -> tuple[dict[str, list[dict[str, Any]]], str | None]:
    """Computations of an HLO module: {name: [instruction, ...]} and the entry computation's name.

    Each instruction: name, type (result type text), op, args (operand text), operands (names), attrs
    (text after the operands).
    """
    comps: dict[str, list[dict[str, Any]]] = {}
    entry, current = None, None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace() and line.rstrip().endswith("{") and not line.startswith("HloModule"):
            m = _HEADER.match(line)
            if m:
                current = m.group(2)
                comps[current] = []
                if m.group(1):
                    entry = current
                continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR.match(line) if current is not None else None
        if m:
            name, rtype, op, rest = m.groups()
            operands, attrs = _operands_and_attrs(rest)
            comps[current].append({"name": name, "type": rtype, "op": op, "attrs": attrs, "args": operands,
                                   "operands": re.findall(r"%([\w.\-]+)", operands)})
    return comps, entry


def _called(instr: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, computation) pairs an instruction runs."""
    out = []
    for role in ("body", "condition", "to_apply", "calls", "true_computation", "false_computation"):
        out += [(role, m.group(1)) for m in re.finditer(rf"\b{role}=%?([\w.\-]+)", instr["attrs"])]
    m = re.search(r"branch_computations=\{([^}]*)\}", instr["attrs"])
    if m:
        out += [("branch", c.strip().lstrip("%")) for c in m.group(1).split(",")]
    return out


def trip_count(loop: dict[str, Any], comps: dict[str, list[dict[str, Any]]], caller: str) -> int | None:
    """Trips of a `while`: XLA's known_trip_count, else its condition `i < N` (or <=) with a constant start."""
    m = re.search(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"', loop["attrs"])
    if m:
        return int(m.group(1))
    cond = next((c for role, c in _called(loop) if role == "condition"), None)
    if cond not in comps:
        return None
    body = {i["name"]: i for i in comps[cond]}
    root = comps[cond][-1] if comps[cond] else None
    if root is None or root["op"] != "compare" or len(root["operands"]) != 2:
        return None
    direction = re.search(r"direction=(\w+)", root["attrs"])
    lhs, rhs = (body.get(n) for n in root["operands"])
    if direction is None or lhs is None or rhs is None:
        return None
    direction = direction.group(1)
    if lhs["op"] == "constant":  # N > i is i < N
        lhs, rhs = rhs, lhs
        direction = {"GT": "LT", "GE": "LE"}.get(direction, direction)
    bound = _constant_value(rhs)
    index = re.search(r"index=(\d+)", lhs["attrs"]) if lhs["op"] == "get-tuple-element" else None
    if bound is None or index is None or direction not in ("LT", "LE"):
        return None
    start = 0
    instrs = {i["name"]: i for i in comps.get(caller, [])}
    init = instrs.get(loop["operands"][0]) if loop["operands"] else None
    if init is not None and init["op"] == "tuple" and int(index.group(1)) < len(init["operands"]):
        value = _constant_value(instrs.get(init["operands"][int(index.group(1))]))
        start = 0 if value is None else value
    return max(bound - start + (direction == "LE"), 0)


def _constant_value(instr: dict[str, Any] | None) -> int | None:
    """The value of an integer scalar `constant(N)` instruction, else None."""
    if instr is None or instr["op"] != "constant":
        return None
    m = re.fullmatch(r"\s*(-?\d+)\s*", instr["args"])
    return int(m.group(1)) if m else None


def group_size(attrs: str, num_devices: int) -> int:
    """Devices in each replica group of a collective (all of them when the groups are not given)."""
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
    if m:  # mesh['data'=1,'fsdp'=64,'tensor'=1] {'fsdp'}
        sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", m.group(1))}
        return math.prod(sizes.get(a, 1) for a in re.findall(r"'([^']+)'", m.group(2)))
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
    if m:  # iota groups [num_groups, group_size]<=[...]
        return int(m.group(2))
    m = re.search(r"replica_groups=\{\{([^}]*)\}", attrs)
    if m:  # explicit {{0,1,2,3},{4,5,6,7}}
        return len(m.group(1).split(","))
    return num_devices


def _collective_bytes(instr: dict[str, Any]) -> float:
    """Bytes of a collective's results (an async start's type also holds its operands: skipped)."""
    op, rtype = instr["op"], _strip_comments(instr["type"])
    if op in ("all-gather-start", "collective-permute-start", "all-to-all-start") and rtype.startswith("("):
        parts = split_top_level(rtype)  # (operands, results[, context...])
        return sum(array_bytes(parts[1])) if len(parts) >= 2 else sum(array_bytes(rtype)) / 2
    return sum(array_bytes(rtype))


def _link_traffic(kind: str, nbytes: float, n: int) -> float:
    """Bytes a chip sends plus receives for one collective with ring algorithms over `n` devices."""
    if n <= 1:
        return 0.0
    sent = {"all-gather": (n - 1) / n * nbytes, "all-to-all": (n - 1) / n * nbytes,
            "ragged-all-to-all": (n - 1) / n * nbytes, "reduce-scatter": (n - 1) * nbytes,
            "all-reduce": 2 * (n - 1) / n * nbytes}.get(kind, nbytes)
    return 2 * sent


def _empty() -> dict[str, Any]:
    return {"collectives": {}, "hbm_bytes": 0.0, "unknown_loops": []}


def _add(total: dict[str, Any], part: dict[str, Any], times: int) -> None:
    for kind, v in part["collectives"].items():
        t = total["collectives"].setdefault(kind, {"executions": 0, "bytes": 0.0, "link_bytes": 0.0})
        for k in t:
            t[k] += times * v[k]
    total["hbm_bytes"] += times * part["hbm_bytes"]
    total["unknown_loops"] += part["unknown_loops"]


def hlo_step_stats(text: str, num_devices: int) -> dict[str, Any]:
    """Per chip and per step: {collectives: {kind: {executions, bytes, link_bytes}}, hbm_bytes, unknown_loops}.

    `unknown_loops` names the while loops whose trip count could not be found (counted once).
    """
    comps, entry = parse_hlo(text)
    memo: dict[tuple[str, bool], dict[str, Any]] = {}

    def visit(comp: str, count_hbm: bool, depth: int = 0) -> dict[str, Any]:
        key = (comp, count_hbm)
        if key in memo:
            return memo[key]
        total = _empty()
        if comp not in comps or depth > 64:
            return total
        types = {i["name"]: i["type"] for i in comps[comp]}
        for instr in comps[comp]:
            op = instr["op"]
            base = op[:-len("-start")] if op.endswith("-start") else op
            if base in COLLECTIVES and not op.endswith("-done"):
                nbytes = _collective_bytes(instr)
                n = group_size(instr["attrs"], num_devices)
                t = total["collectives"].setdefault(base, {"executions": 0, "bytes": 0.0, "link_bytes": 0.0})
                t["executions"] += 1
                t["bytes"] += nbytes
                t["link_bytes"] += _link_traffic(base, nbytes, n)
            elif count_hbm and op not in _NOT_HBM and not op.endswith("-done"):
                total["hbm_bytes"] += _hbm_traffic(instr, types, comps)
            if op.endswith(("-done", "-update")):
                continue  # the matching start already ran the called computation
            called = _called(instr)
            if op == "while":
                body = next((c for role, c in called if role == "body"), None)
                trips = trip_count(instr, comps, comp)
                if trips is None:
                    total["unknown_loops"].append(instr["name"])
                    trips = 1
                if body:
                    _add(total, visit(body, count_hbm, depth + 1), trips)
            elif op == "conditional":
                branches = [visit(c, count_hbm, depth + 1) for role, c in called
                            if role in ("branch", "true_computation", "false_computation")]
                if branches:
                    _add(total, max(branches, key=_cost), 1)
            else:
                for role, callee in called:
                    if role in ("calls", "to_apply") and op not in COLLECTIVES and not op.startswith(
                            ("reduce", "scatter", "sort", "map", "select-and-scatter")):
                        # fusion bodies move no HBM bytes of their own: the fusion's operands/results do
                        _add(total, visit(callee, count_hbm and op in ("call", "async-start", "call-start"),
                                          depth + 1), 1)
        memo[key] = total
        return total

    stats = visit(entry, True) if entry else _empty()
    return stats


def _hbm_traffic(instr: dict[str, Any], types: dict[str, str], comps: dict[str, list[dict[str, Any]]]) -> float:
    """HBM bytes one op reads and writes: its operands and results, except that a fusion reading an
    operand only through dynamic-slices reads just the slices, and a fusion whose root is a
    dynamic-update-slice updates its buffer in place (reads and writes only the update)."""
    operand_bytes = [sum(array_bytes(types[o], hbm_only=True)) if o in types else 0.0 for o in instr["operands"]]
    result_bytes = sum(array_bytes(instr["type"], hbm_only=True))
    body = next((c for role, c in _called(instr) if role == "calls"), None) if instr["op"] == "fusion" else None
    if body in comps and comps[body]:
        fused = comps[body]
        params = {i["name"]: int(i["args"]) for i in fused if i["op"] == "parameter" and i["args"].strip().isdigit()}
        users: dict[str, list[dict[str, Any]]] = {}
        for i in fused:
            for o in i["operands"]:
                users.setdefault(o, []).append(i)
        for name, k in params.items():
            uses = users.get(name, [])
            if k < len(operand_bytes) and uses and all(u["op"] == "dynamic-slice" and u["operands"][0] == name
                                                       for u in uses):
                operand_bytes[k] = sum(sum(array_bytes(u["type"])) for u in uses)
        root = fused[-1]
        if root["op"] == "dynamic-update-slice" and root["operands"] and root["operands"][0] in params:
            k = params[root["operands"][0]]
            if k < len(operand_bytes):
                update = sum(operand_bytes) - operand_bytes[k]
                return 2 * update
    return result_bytes + sum(operand_bytes)


def _cost(stats: dict[str, Any]) -> float:
    return stats["hbm_bytes"] + sum(v["link_bytes"] for v in stats["collectives"].values())
