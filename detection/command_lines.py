"""The commands the project prints for users to paste (resume, evaluate, predict, send kept tracking records,
train on fitted anchors, open the MLflow UI): this interpreter and the script by absolute path, every
argument quoted, so a command runs as printed from any directory, in a shell where the virtual environment
is not activated, whatever the folders are called."""

import shlex
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]  # where train.py, evaluate.py, ... are


def script_command(script: str, *arguments: str) -> str:
    """`<python> <repository>/<script> arguments`, e.g. script_command('train.py', 'ckpt_path=/a b/last.pt')."""
    return shlex.join([sys.executable, str(REPOSITORY / script), *map(str, arguments)])


def module_command(module: str, *arguments: str) -> str:
    """`<python> -m <module> arguments` (the package is installed, editable, by `make install`)."""
    return shlex.join([sys.executable, "-m", module, *map(str, arguments)])


def tool_command(tool: str, *arguments: str) -> str:
    """A console script installed beside this interpreter (`mlflow`), by absolute path."""
    return shlex.join([str(Path(sys.executable).parent / tool), *map(str, arguments)])
