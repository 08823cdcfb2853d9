"""The version of cellc, in a module that imports nothing.

`cellc/__init__` re-exports it; modules inside the package (api, cli, the targets, aot) read it
from here, so that none of them imports the package's `__init__` (which imports them: a cycle).
"""

__version__ = "0.1.0"
