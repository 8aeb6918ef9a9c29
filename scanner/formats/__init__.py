"""Model file formats: detection from bytes, bounded readers, pickle scanning.

Nothing here executes code from a file. See scanner.loading for the policy that ties them together.
"""

from scanner.formats.detect import CODE_BEARING_FORMATS, LOADABLE_FORMATS, detect_format
from scanner.formats.limits import DEFAULT_LIMITS, LoadLimits
from scanner.formats.pickle_scan import STATE_DICT_ALLOWLIST, PickleScanResult, scan_pickle
from scanner.formats.report import CONVERT_ADVICE, FileReport

__all__ = [
    "CODE_BEARING_FORMATS",
    "CONVERT_ADVICE",
    "DEFAULT_LIMITS",
    "LOADABLE_FORMATS",
    "STATE_DICT_ALLOWLIST",
    "FileReport",
    "LoadLimits",
    "PickleScanResult",
    "detect_format",
    "scan_pickle",
]
