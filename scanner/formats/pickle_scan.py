"""Static pickle scanning: which globals would unpickling import and call? Nothing is executed.

Policy (allowlist first): a PyTorch state-dict pickle may reference only the globals that
`torch.load(weights_only=True)` itself accepts for plain tensors and containers; any other
GLOBAL / STACK_GLOBAL / INST target, any extension-registry code (EXT1/2/4) and any
STACK_GLOBAL whose module or name is not a literal string is a finding. Because every call a
pickle can make (REDUCE, OBJ, NEWOBJ, BUILD's __setstate__) needs a callable that was first
imported by one of those opcodes, the allowlist closes the known bypasses at once: builtins
fetched through memo tricks, marshal + types.FunctionType chains, importlib / getattr chains,
nested pickle.loads, operator.attrgetter, copyreg extensions.

Two independent readers look at every pickle:
1. a stdlib `pickletools.genops` walk with a small stack/memo simulation that resolves
   STACK_GLOBAL operands (this is the gate: it is short and we control it);
2. fickling (Trail of Bits' maintained pickle decompiler), whose symbolic interpreter lists
   the imports it sees and whose `check_safety` explains them; any import it sees that the
   allowlist does not hold is a finding too, so a gap in either reader is covered by the other.
"""

from __future__ import annotations

import contextlib
import io
import pickletools
from dataclasses import dataclass, field
from typing import Any

from scanner.errors import Finding
from scanner.formats.limits import DEFAULT_LIMITS, LoadLimits

_STORAGE_TYPES = (
    "Float",
    "Double",
    "Half",
    "BFloat16",
    "Long",
    "Int",
    "Short",
    "Char",
    "Byte",
    "Bool",
)

# The globals a plain state dict (tensors, parameters, OrderedDict) needs. Every entry is also
# accepted by torch's own weights_only unpickler (tests/test_formats_pickle.py checks that),
# so the allowlist is never looser than the loader that runs after it.
STATE_DICT_ALLOWLIST: frozenset[str] = frozenset(
    {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch.Size",
        *(f"torch.{t}Storage" for t in _STORAGE_TYPES),
    }
)

# Modules that mean code execution outright (used to word findings; the gate is the allowlist).
_KNOWN_DANGEROUS_MODULES: frozenset[str] = frozenset(
    {
        "builtins",
        "__builtin__",
        "os",
        "posix",
        "nt",
        "subprocess",
        "sys",
        "pty",
        "shutil",
        "socket",
        "marshal",
        "types",
        "importlib",
        "runpy",
        "code",
        "codeop",
        "pickle",
        "_pickle",
        "dill",
        "operator",
        "functools",
        "ctypes",
        "webbrowser",
        "requests",
        "urllib",
        "http",
        "asyncio",
        "multiprocessing",
        "numpy.testing",
        "torch.hub",
        "torch.serialization",
        "copyreg",
    }
)

_DANGEROUS_BUILTINS: frozenset[str] = frozenset(
    {
        "eval",
        "exec",
        "compile",
        "open",
        "getattr",
        "setattr",
        "delattr",
        "__import__",
        "globals",
        "locals",
        "vars",
        "input",
        "breakpoint",
        "apply",
        "execfile",
        "memoryview",
        "type",
        "object",
    }
)

_STRING_OPCODES = frozenset(
    {
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "UNICODE",
        "BINUNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE8",
    }
)
_PUT_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPCODES = frozenset({"GET", "BINGET", "LONG_BINGET"})
_EXT_OPCODES = frozenset({"EXT1", "EXT2", "EXT4"})


class _OpcodeLimitExceeded(Exception):
    """The pickle has more opcodes than LoadLimits.max_pickle_opcodes."""


_MARK = object()  # the MARK sentinel on the simulated stack
_UNKNOWN = object()  # any value the simulation does not track


@dataclass
class PickleScanResult:
    """What a pickle would import, whether that is allowed, and whether it parses at all."""

    globals: list[str] = field(default_factory=list)  # "module.name", first-seen order, unique
    findings: list[Finding] = field(default_factory=list)
    opcodes: int = 0
    problem: str | None = None  # the pickle is truncated / corrupt / over a limit
    fickling_severity: str | None = None
    fickling_analysis: str | None = None

    @property
    def clean(self) -> bool:
        return not self.findings and self.problem is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "globals": list(self.globals),
            "findings": [f.to_dict() for f in self.findings],
            "opcodes": self.opcodes,
            "problem": self.problem,
            "fickling_severity": self.fickling_severity,
        }


def _global_finding(qualified: str, member: str | None, how: str) -> Finding:
    module = qualified.rsplit(".", 1)[0] if "." in qualified else qualified
    top = module.split(".", 1)[0]
    attr = qualified.rsplit(".", 1)[-1]
    if top in ("builtins", "__builtin__", "__builtins__"):
        dangerous = attr in _DANGEROUS_BUILTINS
    else:
        dangerous = module in _KNOWN_DANGEROUS_MODULES or top in _KNOWN_DANGEROUS_MODULES
    if dangerous:
        why = "a known code-execution primitive"
    elif top == "torch" or top == "numpy":
        why = "a class or function outside the plain-tensor allowlist (a pickled module or object, not just weights)"
    else:
        why = "not in the allowlist of torch.load(weights_only=True) for state dicts"
    where = f" in {member}" if member else ""
    return Finding(
        code="pickle.unsafe_global",
        message=f"pickle{where} imports {qualified} (via {how}): {why}; unpickling would import and may call it",
        severity="high",
        detail={"global": qualified, "member": member, "opcode": how, "known_dangerous": dangerous},
    )


def _pop_to_mark(stack: list[Any]) -> list[Any]:
    items: list[Any] = []
    while stack:
        item = stack.pop()
        if item is _MARK:
            return items
        items.append(item)
    raise ValueError("MARK expected on the stack but not found")


def _walk(
    data: bytes, start: int, allowlist: frozenset[str], member: str | None, limits: LoadLimits, result: PickleScanResult
) -> int:
    """Walk one pickle from `start` with a stack/memo simulation; return the offset after STOP."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    stream = io.BytesIO(data)
    stream.seek(start)
    end = start
    seen = set(result.globals)

    def note_global(qualified: str, how: str) -> None:
        if qualified not in seen:
            seen.add(qualified)
            result.globals.append(qualified)
        if qualified not in allowlist:
            result.findings.append(_global_finding(qualified, member, how))

    for info, arg, pos in pickletools.genops(stream):
        result.opcodes += 1
        if result.opcodes > limits.max_pickle_opcodes:
            raise _OpcodeLimitExceeded(f"more than {limits.max_pickle_opcodes} opcodes (LoadLimits.max_pickle_opcodes)")
        name = info.name
        end = stream.tell()
        if name == "STOP":
            return end
        if name in ("PROTO", "FRAME"):
            continue
        if name in _STRING_OPCODES:
            stack.append(arg if isinstance(arg, str) else _UNKNOWN)
        elif name in _PUT_OPCODES:
            if not stack:
                raise ValueError(f"{name} on an empty stack at offset {pos}")
            memo[int(arg)] = stack[-1]
        elif name == "MEMOIZE":
            if not stack:
                raise ValueError(f"MEMOIZE on an empty stack at offset {pos}")
            memo[len(memo)] = stack[-1]
        elif name in _GET_OPCODES:
            if int(arg) not in memo:
                raise ValueError(f"{name} of memo key {arg} that was never stored (offset {pos})")
            stack.append(memo[int(arg)])
        elif name == "DUP":
            if not stack:
                raise ValueError("DUP on an empty stack")
            stack.append(stack[-1])
        elif name == "MARK":
            stack.append(_MARK)
        elif name == "POP_MARK":
            _pop_to_mark(stack)
        elif name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            note_global(f"{module}.{attr}", name)
            if name == "INST":
                _pop_to_mark(stack)
            stack.append(_UNKNOWN)
        elif name == "STACK_GLOBAL":
            if len(stack) < 2:
                raise ValueError("STACK_GLOBAL needs two operands")
            attr, module = stack.pop(), stack.pop()
            if isinstance(module, str) and isinstance(attr, str):
                note_global(f"{module}.{attr}", name)
            else:
                # The operands were computed at unpickling time: nothing can vouch for them.
                result.findings.append(
                    Finding(
                        code="pickle.dynamic_global",
                        message=f"pickle{' in ' + member if member else ''} uses STACK_GLOBAL with a computed "
                        "module/name, so the imported object cannot be determined statically",
                        severity="high",
                        detail={"member": member, "offset": pos},
                    )
                )
            stack.append(_UNKNOWN)
        elif name in _EXT_OPCODES:
            result.findings.append(
                Finding(
                    code="pickle.extension_registry",
                    message=f"pickle uses {name} (copyreg extension registry code {arg}) to import an object by number",
                    severity="high",
                    detail={"member": member, "code": arg},
                )
            )
            stack.append(_UNKNOWN)
        else:
            before = info.stack_before
            if pickletools.markobject in before:
                _pop_to_mark(stack)
                n_pop = before.index(pickletools.markobject)
            else:
                n_pop = len(before)
            if n_pop > len(stack):
                raise ValueError(f"{name} at offset {pos} needs {n_pop} stack item(s), has {len(stack)}")
            del stack[len(stack) - n_pop :]
            for item in info.stack_after:
                stack.append(_MARK if item is pickletools.markobject else _UNKNOWN)
    raise ValueError("pickle ended without STOP (truncated)")


def _fickling_imports(data: bytes, limits: LoadLimits) -> tuple[list[str], str | None, str | None]:
    """Imports fickling's symbolic interpreter sees, plus its own severity and explanation."""
    import ast

    from fickling.analysis import check_safety
    from fickling.fickle import Interpreter, InterpreterLimits, Pickled

    pickled = Pickled.load(data)
    interpreter = Interpreter(pickled, limits=InterpreterLimits(max_opcodes=limits.max_pickle_opcodes))
    tree = interpreter.to_ast()
    pickled._ast = tree  # reuse the bounded interpretation in check_safety
    imports: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imports += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            imports += [alias.name for alias in node.names]
    safety = check_safety(pickled)
    return imports, safety.severity.name, str(safety.to_dict().get("analysis", ""))[:2000]


def scan_pickle(
    data: bytes,
    *,
    allowlist: frozenset[str] = STATE_DICT_ALLOWLIST,
    member: str | None = None,
    limits: LoadLimits = DEFAULT_LIMITS,
    stacked: bool = False,
) -> PickleScanResult:
    """Scan pickle bytes without unpickling them.

    `stacked=True` scans every pickle concatenated in `data` (legacy `torch.save` files are
    several pickles back to back); otherwise trailing bytes after STOP are ignored, as
    `pickle.load` ignores them. Never raises for hostile content: parse failures become
    `problem`, unsafe imports become `findings`.
    """
    result = PickleScanResult()
    if len(data) > limits.max_pickle_bytes:
        result.problem = f"pickle is {len(data)} bytes, over LoadLimits.max_pickle_bytes={limits.max_pickle_bytes}"
        return result
    if not data:
        result.problem = "empty pickle"
        return result
    offset = 0
    over_limit = False
    try:
        while offset < len(data):
            offset = _walk(data, offset, allowlist, member, limits, result)
            if not stacked:
                break
    except _OpcodeLimitExceeded as exc:
        result.problem = str(exc)
        over_limit = True
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, UnicodeDecodeError, MemoryError) as exc:
        result.problem = f"corrupt or truncated pickle: {exc}"
    if over_limit:
        # fickling decodes every opcode into an object before its own limits apply: do not hand it
        # a pickle we already know is oversized (that is a memory DoS), the problem alone rejects it.
        result.fickling_severity = "NOT_RUN"
        return result

    # Second reader. A failure here is not a finding by itself (the walk above is the gate),
    # but every import it reports is held against the allowlist too.
    try:
        # fickling prints warnings about malformed pickles; keep them out of our stdout (CLI --json).
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            imports, severity, analysis = _fickling_imports(data, limits)
        result.fickling_severity, result.fickling_analysis = severity, analysis
        already = {f.detail.get("global") for f in result.findings}
        for qualified in imports:
            if qualified not in allowlist and qualified not in already:
                already.add(qualified)
                if qualified not in result.globals:
                    result.globals.append(qualified)
                result.findings.append(_global_finding(qualified, member, "fickling's decompilation"))
    except Exception as exc:  # noqa: BLE001 - fickling on hostile bytes may raise anything
        result.fickling_severity = "ERROR"
        result.fickling_analysis = f"fickling could not analyse the pickle: {type(exc).__name__}: {exc}"[:500]
    if result.findings and result.fickling_analysis:
        for f in result.findings:
            f.detail.setdefault("fickling_severity", result.fickling_severity)
    return result


def looks_like_pickle(head: bytes) -> bool:
    """True for bytes that start like a protocol 2+ pickle (`\\x80` + protocol number)."""
    return len(head) >= 2 and head[0] == 0x80 and 1 <= head[1] <= 5
