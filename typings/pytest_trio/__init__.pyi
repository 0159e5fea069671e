# pytest-trio 0.8 ships no type information (no py.typed); this covers its
# public API. The plugin hooks and fixtures (nursery, mock_clock,
# autojump_clock) are found by pytest by name and need no stub.
from collections.abc import Callable

from _pytest.fixtures import FixtureFunctionDefinition

__all__ = ["trio_fixture"]
__version__: str

def trio_fixture(func: Callable[..., object]) -> FixtureFunctionDefinition: ...
