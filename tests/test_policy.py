"""The policy: TOML rules, kind-aware flags, null scores, near-duplicates and the funnel, all without a model."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from filters.duplicates import Search, near_duplicates
from filters.policy import Decision, Op, Policy
from manifests.errors import ConfigError

VIDEO, FROZEN = "video_copy_paste", "image_frozen"


def row(kind: str = VIDEO, sample_id: str = "s0", **scores) -> dict:
    return {"sample_id": sample_id, "kind": kind, **scores}


def test_default_policy_loads_from_the_package_with_every_rule_explained():
    policy = Policy.default()
    assert policy.source == "default" and policy.rules
    assert all(rule.why for rule in policy.rules)
    assert "recompose_psnr<30" in [rule.name for rule in policy.rules]


def test_a_rule_fires_past_its_bound_and_names_itself():
    policy = Policy.from_toml('[[rule]]\nscore = "recompose_psnr"\nbelow = 30\n', "t")
    assert policy.rules[0].op is Op.BELOW
    assert policy.decide(row(recompose_psnr=29.9)) == Decision(False, ["recompose_psnr<30"], [])
    assert policy.decide(row(recompose_psnr=30.0)).keep


def test_null_scores_never_reject():
    policy = Policy.default()
    assert policy.decide(row()) == Decision(True, [], [])
    assert policy.decide(row(recompose_psnr=None, ssim_blended_mean=float("nan"))).keep


def test_frozen_samples_are_flagged_static_but_kept_and_frozen_videos_are_rejected():
    policy = Policy.default()
    static = {f"ssim_{layer}_mean": 1.0 for layer in ("foreground", "background", "blended")}
    frozen = policy.decide(row(FROZEN, **static))
    assert frozen.keep and frozen.reject_reasons == []
    assert frozen.flags == ["ssim_foreground_mean>0.995", "ssim_blended_mean>0.995", "ssim_background_mean>0.995"]
    video = policy.decide(row(VIDEO, **static))
    assert video.reject_reasons == ["ssim_foreground_mean>0.995", "ssim_blended_mean>0.995"]
    assert video.flags == ["ssim_background_mean>0.995"]  # a static camera is fine for a video background


@pytest.mark.parametrize(("text", "message"), [
    ('[[rule]]\nscore = "nope"\nbelow = 1\n', "'nope' is not a score column"),
    ('[[rule]]\nscore = "recompose_psnr"\n', "exactly one of `below` or `above`"),
    ('[[rule]]\nscore = "recompose_psnr"\nbelow = 1\nabove = 2\n', "exactly one of `below` or `above`"),
    ('[[rule]]\nscore = "recompose_psnr"\nbelow = "30"\n', "must be a number"),
    ('[[rule]]\nscore = "recompose_psnr"\nbelow = 30\nallow = ["movie"]\n', "`allow` must list sample kinds"),
    ('[[rule]]\nscore = "recompose_psnr"\nbelow = 30\nwhy = "x"\nlimit = 3\n', "unknown keys ['limit']"),
    ('[thresholds]\nx = 1\n', "unknown tables ['thresholds']"),
    ('[duplicates]\nclip_cosine_above = 2\n', "clip_cosine_above must be a number in [-1, 1]"),
    ('[duplicates]\nclip_cosine_above = 0.9\nsearch = "faiss"\n', "search must be one of ['auto', 'exact', 'lsh']"),
    ('[duplicates]\nclip_cosine_above = 0.9\nk = 3\n', "takes only clip_cosine_above and search"),
    ('[[rule]\n', "not valid TOML"),
])
def test_bad_policies_name_the_problem(text, message):
    with pytest.raises(ConfigError, match=f"--policy bad.toml.*{__import__('re').escape(message)}"):
        Policy.from_toml(text, "bad.toml")


def test_load_refuses_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="is not a file"):
        Policy.load(tmp_path / "missing.toml")


def unit(*values: float) -> list[float]:
    vector = np.asarray(values, dtype=np.float32)
    return (vector / np.linalg.norm(vector)).tolist()


def test_near_duplicates_point_at_the_earliest_kept_sample():
    ids = ["a", "b", "c", "d"]
    embeddings = [unit(1, 0), unit(1, 0.01), unit(0, 1), unit(1, 0.02)]
    assert near_duplicates(ids, embeddings, [True, True, True, True], 0.99) == [None, "a", None, "a"]


def test_a_rejected_sample_is_never_the_one_kept_among_duplicates():
    ids = ["a", "b"]
    embeddings = [unit(1, 0), unit(1, 0.01)]
    # a is rejected by a rule, so b is the representative and a points at it
    assert near_duplicates(ids, embeddings, [False, True], 0.99) == ["b", None]


def test_missing_embeddings_are_never_duplicates():
    assert near_duplicates(["a", "b"], [None, None], [True, True], 0.5) == [None, None]
    assert near_duplicates(["a", "b"], [unit(1, 0), None], [True, True], 0.5) == [None, None]


def test_apply_rejects_duplicates_with_a_reason():
    policy = Policy.from_toml("[duplicates]\nclip_cosine_above = 0.99\n", "t")
    rows = [row(sample_id="a"), row(sample_id="b")]
    decisions = policy.apply(rows, [unit(1, 0), unit(1, 0.001)])
    assert decisions[0] == Decision(True, [], [], None)
    assert decisions[1] == Decision(False, ["clip_duplicate_cosine>0.99"], [], "a")


def test_funnel_counts_alone_cumulative_flagged_and_unscored():
    policy = Policy.from_toml(
        '[[rule]]\nscore = "recompose_psnr"\nbelow = 30\n'
        '[[rule]]\nscore = "alpha_coverage_max"\nbelow = 0.01\n'
        '[[rule]]\nscore = "ssim_blended_mean"\nabove = 0.995\nallow = ["image_frozen"]\n', "t")
    rows = [
        row(sample_id="a", recompose_psnr=20.0, alpha_coverage_max=0.0, ssim_blended_mean=0.5),  # both rules
        row(sample_id="b", recompose_psnr=40.0, alpha_coverage_max=0.0, ssim_blended_mean=0.5),  # coverage only
        row(FROZEN, sample_id="c", recompose_psnr=40.0, alpha_coverage_max=0.5, ssim_blended_mean=1.0),  # flag
        row(sample_id="d", recompose_psnr=None, alpha_coverage_max=0.5, ssim_blended_mean=None),  # kept, unscored
    ]
    scores = ("recompose_psnr", "alpha_coverage_max", "ssim_blended_mean")
    table = pa.Table.from_pylist(rows, pa.schema([("sample_id", pa.string()), ("kind", pa.string()),
                                                  *[(score, pa.float32()) for score in scores]]))
    outcome = policy.outcome(policy.hits(table), table.column("sample_id"))
    result = outcome.funnel({"recompose_psnr": "file unreadable", "clip_text_blended": "no CLIP"})
    steps = [(s.rule, s.alone, s.left, s.flagged, s.unscored) for s in result.steps]
    assert steps == [
        ("recompose_psnr<30", 1, 3, 0, 1),
        ("alpha_coverage_max<0.01", 2, 2, 0, 0),
        ("ssim_blended_mean>0.995", 0, 2, 1, 1),
    ]
    assert (result.total, result.kept) == (4, 2)
    assert result.unscored_why == {"recompose_psnr": "file unreadable"}  # only scores a rule reads
    text = result.as_text()
    assert "kept 2 of 4 samples" in text and "unscored recompose_psnr (1 samples): file unreadable" in text


def test_the_search_is_read_from_the_policy():
    assert Policy.from_toml("[duplicates]\nclip_cosine_above = 0.9\n", "t").duplicate_search is Search.AUTO
    policy = Policy.from_toml('[duplicates]\nclip_cosine_above = 0.9\nsearch = "lsh"\n', "t")
    assert policy.duplicate_search is Search.LSH


def test_rules_on_a_table_decide_as_decide_does_row_by_row():
    policy = Policy.default()
    rng = np.random.default_rng(0)
    scores = sorted({rule.score for rule in policy.rules})
    rows = []
    for i in range(300):
        row = {"sample_id": f"s{i:03d}", "kind": FROZEN if i % 3 == 0 else VIDEO}
        for score in scores:
            pick = rng.integers(0, 10)
            # nulls, NaNs, values on and either side of a bound (in float32, as stored), and anything
            bounds = [rule.bound for rule in policy.rule(score)]
            row[score] = (None if pick == 0 else float("nan") if pick == 1
                          else float(np.float32(rng.choice(bounds) + rng.choice([-1e-6, 0.0, 1e-6]))) if pick < 6
                          else float(np.float32(rng.uniform(-1, 100))))
        row["caption_layers"] = None if row["caption_layers"] is None else int(rng.integers(0, 4))
        rows.append(row)
    expected = [policy.decide(row) for row in rows]
    table = pa.Table.from_pylist(rows, pa.schema([("sample_id", pa.string()), ("kind", pa.string()),
                                                  *[(score, pa.int8() if score == "caption_layers" else pa.float32())
                                                    for score in scores]]))
    outcome = policy.outcome(policy.hits(table), table.column("sample_id"))
    assert outcome.decisions() == expected
    assert 0 < sum(d.keep for d in expected) < len(rows) and any(d.flags for d in expected)
    assert outcome.funnel().steps[0].unscored == sum(row["recompose_psnr"] is None for row in rows)


def test_an_unknown_kind_is_an_error_on_a_table_too():
    table = pa.table({"sample_id": ["a"], "kind": ["movie"], "recompose_psnr": pa.array([40.0], pa.float32())})
    with pytest.raises(ValueError, match="movie"):
        Policy.from_toml('[[rule]]\nscore = "recompose_psnr"\nbelow = 30\n', "t").hits(table)
