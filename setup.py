"""Build step that pyproject.toml cannot express: ship ``src/growlm-lm-eval.pth`` at the top of site-packages.

Its one line runs ``_growlm_lm_eval.install()`` at interpreter start-up, which makes ``lm_eval --model growlm`` work
(lm-eval reads no entry point for models). Every other setting is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = Path(__file__).parent / "src" / "growlm-lm-eval.pth"


class BuildPyWithPth(build_py):
    """build_py that also copies the .pth into the wheel's root (for an editable wheel: the folder packed)."""

    def run(self) -> None:
        super().run()
        root = self.distribution.get_command_obj("install").install_lib if self.editable_mode else self.build_lib
        self.mkpath(root)
        shutil.copyfile(PTH, Path(root, PTH.name))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib, PTH.name))]


setup(cmdclass={"build_py": BuildPyWithPth})
