"""Like Infinity's runner on a machine without flash-attn: importing it fails."""

import flash_attn  # noqa: F401
