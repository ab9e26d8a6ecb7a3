"""reid.utils.registry: names, aliases and the one-line error for an unknown name."""
import pytest

from reid.errors import ReidError
from reid.utils.registry import Registry


@pytest.fixture()
def pools() -> Registry:
    registry = Registry("pooling layer")

    @registry.register(name="avgpool", aliases=("GlobalAvgPool", "fastavgpool"))
    class Avg:
        pass

    @registry.register()
    class MaxPool:
        pass
    return registry


def test_aliases_resolve_to_the_registered_name(pools):
    assert pools.get("GlobalAvgPool") is pools.get("avgpool")
    assert pools.canonical("GlobalAvgPool") == pools.canonical("fastavgpool") == "avgpool"
    assert pools.canonical("MaxPool") == "MaxPool"          # a name is its own canonical name
    assert pools.canonical("unknown") == "unknown"          # canonical never raises; get does
    assert pools.names() == ["MaxPool", "avgpool"]
    assert pools.names(aliases=True) == ["GlobalAvgPool", "MaxPool", "avgpool", "fastavgpool"]


def test_unknown_name_is_one_line_naming_the_closest(pools):
    with pytest.raises(ReidError, match=r"^unknown pooling layer 'avgpol'; did you mean "
                                        r"'avgpool'\? \(registered: MaxPool, avgpool\)$"):
        pools.get("avgpol")
