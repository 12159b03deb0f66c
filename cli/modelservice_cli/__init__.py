"""The `modelservice` command line, and the contract of `modelservice serve`.

Pure standard library, so both images carry it without the other's code: the runtime image
with the runtime, the operator image with the operator. `main` is the console script; it
imports a command's module only when that command runs. `serve_flags` is the one table of
the runtime's settings (flags, environment variables, defaults, help), read by the
runtime's settings, the operator's rendering of the container and the spec's descriptions.
`__version__` is the one version of everything (pyproject.toml reads it; the runtime, the
operator's default runtime image and the Helm chart repeat it, checked by a test).
"""

__version__ = "0.1.0"
