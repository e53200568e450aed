"""Group packing helpers: validation splits that depend on the key's value alone."""

import numpy as np

from gradfit.packing import _key_codes, held_out


def test_text_keys_hash_to_fnv1a_of_their_utf8_bytes():
    # FNV-1a 64-bit test vectors (Fowler-Noll-Vo reference), fixed by the algorithm, not a library
    codes = _key_codes(np.array(["", "a", "foobar"], dtype=object))
    assert [int(c) for c in codes] == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C, 0x85944171F73967E8]
    accented = _key_codes(np.array(["é", "e"]))
    assert accented[0] != accented[1]


def test_float_and_date_keys_hash_by_value():
    assert _key_codes(np.array([0.0]))[0] == _key_codes(np.array([-0.0]))[0]
    assert len(set(_key_codes(np.array([0.5, 1.5, 2.5])).tolist())) == 3
    days = np.array(["2024-01-01", "2024-01-02"], dtype="datetime64[D]")
    assert _key_codes(days).tolist() == [19723, 19724]


def test_a_text_keys_split_does_not_depend_on_the_other_keys():
    names = np.array([f"sensor-{i}" for i in range(300)], dtype=object)
    split = held_out(names, 30, 0.3, seed=1)
    assert abs(split.mean() - 0.3) < 0.03
    np.testing.assert_array_equal(held_out(names[150:], 30, 0.3, seed=1), split[150:])


def test_each_group_holds_out_what_a_single_fits_split_of_its_size_would():
    from gradfit.data import holdout_split

    counts = np.array([1, 2, 3, 7, 15, 20, 20])
    keys = np.arange(counts.size) * 7919
    for fraction in (0.05, 0.2, 0.5, 0.9):
        held = held_out(keys, 20, fraction, seed=3, counts=counts)
        expected = [holdout_split(int(n), fraction, 0)[1].size for n in counts]
        assert held.sum(1).tolist() == expected
        assert not (held & (np.arange(20)[None, :] >= counts[:, None])).any()  # padding is never held out
    assert not np.array_equal(held_out(keys, 20, 0.5, seed=3, counts=counts), held_out(keys, 20, 0.5, seed=4, counts=counts))
