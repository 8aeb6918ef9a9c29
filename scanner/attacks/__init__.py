"""The backdoor attacks of Rawat et al. (arXiv 2108.01644): TrAIL, ReD, ReX, computation bypass, data poisoning.

Each attack returns an `AttackResult` with a NEW generator (the input is never modified), the
trigger, the target and measured TarDis / ExpDis.
"""

from scanner.attacks.base import AttackResult
from scanner.attacks.bypass import bypass_attack
from scanner.attacks.red import red_attack
from scanner.attacks.rex import expand_body, permute_units, rex_attack
from scanner.attacks.triggers import TRIGGER_KINDS, SubspaceTrigger, make_trigger

__all__ = [
    "TRIGGER_KINDS",
    "AttackResult",
    "SubspaceTrigger",
    "bypass_attack",
    "expand_body",
    "make_trigger",
    "permute_units",
    "red_attack",
    "rex_attack",
]
