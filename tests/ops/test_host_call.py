"""host_call / host_check: results, errors, and checks left out of exported graphs."""

import keras
import numpy as np
import pytest

from kzoo.ops.host_call import host_call, host_check, without_host_checks


def _fail(x):
    raise ValueError("bad input seen on the host")


def test_host_call_returns_tensors_of_the_function_result():
    (out,) = host_call(lambda x: (x * 2,), [np.arange(3, dtype="float32")], [(3,)], ["float32"])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), [0, 2, 4])


def test_host_check_raises_the_functions_error_and_passes_good_input():
    with pytest.raises(ValueError, match="bad input seen on the host"):
        host_check(_fail, [np.zeros(2, "float32")])
    token = host_check(lambda x: None, [np.zeros(2, "float32")])
    assert float(keras.ops.convert_to_numpy(token)) == 1.0


def test_checks_are_left_out_while_tracing_for_export():
    with without_host_checks():
        token = host_check(_fail, [np.zeros(2, "float32")])
    assert float(keras.ops.convert_to_numpy(token)) == 1.0
    # The switch is scoped: checks run again afterwards.
    with pytest.raises(ValueError):
        host_check(_fail, [np.zeros(2, "float32")])


def test_lazy_arguments_are_not_built_when_checks_are_off():
    built = []

    def args():
        built.append(1)
        return [np.zeros(2, "float32")]

    with without_host_checks():
        host_check(_fail, args)
    assert built == []  # an exported graph keeps no trace of the check's inputs
    with pytest.raises(ValueError, match="bad input seen on the host"):
        host_check(_fail, args)
    assert built == [1]
