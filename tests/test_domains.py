import numpy as np
import pytest

from stargan.data.domains import DomainError, resolve_domains


def test_onehot_all_classes_and_subset():
    dm = resolve_domains(["cat", "dog", "wild"], "onehot", [])
    assert dm.names == ["cat", "dog", "wild"]
    assert dm.domain_of([0, 1, 0]) == 1
    sub = resolve_domains(["cat", "dog", "wild"], "onehot", ["wild", "cat"])
    assert sub.names == ["wild", "cat"]
    assert sub.domain_of([1, 0, 0]) == 1
    assert sub.domain_of([0, 0, 1]) == 0
    assert sub.domain_of([0, 1, 0]) == -1          # a class outside the chosen domains


def test_one_attribute_gives_two_domains():
    dm = resolve_domains(["Black_Hair", "Male", "Young"], "multi", ["Male"])
    assert dm.names == ["no_Male", "Male"]
    assert dm.domain_of([1, 1, 0]) == 1
    assert dm.domain_of([1, 0, 1]) == 0
    assert dm.assign(np.array([[0, 0, 0], [1, 1, 1]]))[1] == 0   # nothing excluded


def test_several_attributes_exclusive_and_excluded_count():
    dm = resolve_domains(["Black_Hair", "Blond_Hair", "Brown_Hair", "Male"], "multi",
                         ["Black_Hair", "Blond_Hair", "Brown_Hair"])
    labels = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1],
                       [0, 0, 0, 1],          # none set -> excluded
                       [1, 1, 0, 0]])         # two set -> excluded
    dom, excluded = dm.assign(labels)
    assert dom.tolist() == [0, 1, 2, -1, -1]
    assert excluded == 2


def test_errors_name_the_problem():
    with pytest.raises(DomainError, match="Bald"):
        resolve_domains(["Male", "Young"], "multi", ["Bald"])
    with pytest.raises(DomainError, match="at least two"):
        resolve_domains(["cat", "dog"], "onehot", ["cat"])
    with pytest.raises(DomainError, match="label kind"):
        resolve_domains(["cat", "dog"], "weird", [])
