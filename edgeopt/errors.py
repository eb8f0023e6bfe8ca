"""The one exception tree. The CLI maps each class to a stable exit code.

0 ok · 1 gate failed · 2 usage/config error · 3 input rejected · 4 unsupported op or
conversion failure · 5 environment/device problem (retryable) · 130 interrupted.
"""

from __future__ import annotations


class EdgeoptError(Exception):
    """Base of every error edgeopt raises on purpose.

    ``message`` says what was received and what was expected; ``hint`` says how to fix it.
    """

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"

    def __reduce__(self):
        # The command line runs its jobs in a child process (edgeopt.supervisor), whose errors
        # must reach it as they were raised: same class, message, hint and data (BudgetMissed's
        # result), whatever arguments a subclass's __init__ takes.
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[EdgeoptError], args: tuple, state: dict) -> EdgeoptError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class GateFailed(EdgeoptError):
    """A measured result broke a budget or a regression limit."""

    exit_code = 1


class BudgetMissed(GateFailed):
    """A compress run's artifact missed a budget; its outputs are written (``result``) for inspection."""

    def __init__(self, result) -> None:
        failed, guarded = result.failed_budgets, result.failed_guard
        if guarded and len(guarded) == len(failed):
            message = (f"Fidelity guard: {'; '.join(guarded)}, and no mix of layers kept out of int8 held the "
                       f"limit. The best artifact and its report are in '{result.output_dir}'.")
            hint = ("See report.md's search section for the layers tried; add calibration data, try another "
                    "calibration method, set --max-fidelity-drop to the drop you accept, or pass --no-guard.")
        else:
            message = (f"Budget missed: {'; '.join(failed)}. The best artifact and its report are in "
                       f"'{result.output_dir}'.")
            hint = ("See report.md's budget section for the layers tried; loosen the budget, add calibration data, "
                    "or try another calibration method.")
        super().__init__(message, hint=hint)
        self.result = result


class UsageError(EdgeoptError):
    """A flag, option or config value is wrong."""

    exit_code = 2


class InputRejected(EdgeoptError):
    """A model or data file is missing, corrupt, of the wrong kind, or unsafe to load."""

    exit_code = 3


class UnsafeModel(InputRejected):
    """The model carries code that would run on load; needs ``--trust-model``."""


class ConversionError(EdgeoptError):
    """An op is unsupported or a conversion failed or diverged from the source."""

    exit_code = 4


class Crashed(EdgeoptError):
    """The process doing the work died without a result: a native crash in a framework, most often.
    Said by the command line's supervisor (edgeopt.supervisor), naming the step and the model."""

    exit_code = 4


class EnvironmentProblem(EdgeoptError):
    """Something outside the inputs is wrong: missing framework, device, disk. Often retryable."""

    exit_code = 5


class MissingDependency(EnvironmentProblem):
    """An optional framework is not installed."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{module}', which is not installed.",
            hint=f'pip install "edgeopt[{extra}]"',
        )
        self.module = module
        self.extra = extra


class Interrupted(EdgeoptError):
    """The user interrupted the run (Ctrl-C)."""

    exit_code = 130
