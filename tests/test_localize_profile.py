from peft_cca.localize.profile import pivot_profile, token_kind


def test_token_kinds():
    assert token_kind("8") == "number" and token_kind(" 12,") == "number"
    assert token_kind(" The") == "wording" and token_kind("<|im_end|>") == "wording"


def test_profile_counts_kinds_positions_and_pairs():
    records = [
        {"desired_token": "The", "undesired_token": "This"},
        {"desired_token": "The", "undesired_token": "This"},
        {"desired_token": "8", "undesired_token": "1"},
        {"desired_token": " is", "undesired_token": " 7"},  # a number on either side is a number pivot
    ]
    profile = pivot_profile(records, [0, 0, 9, 4])
    assert profile["kinds"] == {"number": 2, "wording": 2}
    assert profile["position"] == {"median": 2.0, "first_token": 2}
    assert profile["top_pairs"][0] == {"desired": "The", "undesired": "This", "count": 2}
    assert pivot_profile([], [])["position"]["median"] is None
