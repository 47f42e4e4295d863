"""The post-hoc quality estimator: reading answers, agreement, fitting, calibration, the interface."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import KFold

from scheduler.datasets import OutcomeMatrix, read_dataset
from scheduler.predictor import PredictorError
from scheduler.predictor.answers import (
    ANSWER_FEATURES,
    SIGNATURE_SIZE,
    arithmetic_check,
    read_answer,
    read_prompt,
    stable_key,
)
from scheduler.predictor.calibration import within_task_auc
from scheduler.predictor.posthoc import (
    AGREEMENT_FEATURES,
    AnswerTable,
    PosthocEstimator,
    UnknownPosthoc,
    agreement_features,
    available_posthoc,
    cross_fit_ex_ante,
    earlier_sets,
    load_posthoc,
    make_posthoc,
)

DATA = Path(__file__).resolve().parents[1] / "data"
MIXTRAL, GPT4 = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"


def _split(name: str) -> tuple[OutcomeMatrix, OutcomeMatrix]:
    data = read_dataset(DATA / f"{name}.jsonl")
    return (OutcomeMatrix.from_records(data.split("train"), data.models),
            OutcomeMatrix.from_records(data.split("test"), data.models))


@pytest.fixture(scope="module")
def gsm8k() -> tuple[PosthocEstimator, OutcomeMatrix, OutcomeMatrix]:
    train, test = _split("gsm8k_sample")
    assert train.responses is not None
    est = make_posthoc("posthoc").fit(train.prompts, train.scores, train.responses, train.models, tasks=train.tasks)
    return est, train, test


def _feature(reading: np.ndarray, name: str) -> float:
    return float(reading[ANSWER_FEATURES.index(name)])


# -- reading answers ---------------------------------------------------------------------------

def test_choice_letters_are_read_in_any_common_form() -> None:
    prompt = read_prompt("Which is a metal?\nA) wood\nB) iron\nC) glass\nD) salt\nAnswer:")
    assert prompt.options == "ABCD"
    keys = {read_answer(text, prompt).key for text in ("B", "B\n", " (B)", "B) iron", "The answer is B.")}
    assert keys == {stable_key("choice", "B")}
    clean = read_answer("B\n", prompt).features
    assert _feature(clean, "choice_clean") == 1 and _feature(clean, "choice_index") == 1
    refusal = read_answer("I do not have enough context", prompt)
    assert refusal.key == 0 and _feature(refusal.features, "refusal") == 1
    assert read_answer("E", prompt).key == 0                    # not one of the prompt's options


def test_numbers_are_read_canonically_and_arithmetic_is_checked() -> None:
    prompt = read_prompt("Janet's ducks lay 16 eggs per day. She eats 3 and bakes with 4. She sells "
                         "the rest for $2 each. How much does she make?")
    marked = read_answer("16 - 3 - 4 = 9 eggs.\n9 * $2 = $<<9*2=18>>18\n#### 18", prompt)
    last = read_answer("So she makes 9 * 2 = $18.00 every day.", prompt)
    assert marked.key == last.key == stable_key("number", "18")
    assert _feature(marked.features, "number_marked") == 1 and _feature(last.features, "number_last") == 1
    assert _feature(marked.features, "arith_wrong") == 0
    copied = read_answer("She makes 16 dollars.", prompt)
    assert _feature(copied.features, "final_in_prompt") == 1
    assert arithmetic_check("16 - 3 = 13, 9 * $2 = $18, <<5/2=2.5>>, 2 x 3 = 7 and 10 / 3 = 3.33") == (5, 1)
    wrong = read_answer("16 - 7 = 8, so 8 * 2 = 16.\n#### 16", prompt)
    assert _feature(wrong.features, "arith_wrong") == 1 and _feature(wrong.features, "arith_wrong_share") == 0.5


def test_code_is_recognised_by_language_and_parse() -> None:
    prompt = read_prompt("Write a python function to count inversions in an array.")
    py = read_answer("Here it is:\n```python\ndef count(a):\n    return sum(1 for x in a)\n```\nDone.", prompt)
    js = read_answer("```javascript\nfunction count(a) { return a.length; }\n```", prompt)
    broken = read_answer("```python\ndef count(a)\n    return 1\n```", prompt)
    assert py.key == js.key == 0                                # code has no final-answer key
    assert _feature(py.features, "code_python") == 1 and _feature(py.features, "code_parses") == 1
    assert _feature(js.features, "code_other_language") == 1 and _feature(js.features, "code_python") == 0
    assert _feature(broken.features, "code_parses") == 0
    # similar programs have similar signatures, different ones do not
    twin = read_answer("```python\ndef count(a):\n    return sum(1 for x in a)\n```", prompt)
    assert (py.signature == twin.signature).mean() > (py.signature == js.signature).mean()
    assert py.signature.shape == (SIGNATURE_SIZE,)


def test_stable_keys_do_not_depend_on_the_process() -> None:
    # a fixed value: Python's own hash() is salted per process and would break saved tables
    assert stable_key("number", "18") == stable_key("number", "18") != stable_key("number", "18.5")
    assert stable_key("choice", "B") == 168502604659768860


# -- agreement -----------------------------------------------------------------------------------

def _table(keys: list[int], rel: list[float]) -> AnswerTable:
    m = len(keys)
    return AnswerTable(
        model_names=tuple(f"m{j}" for j in range(m)),
        answered=np.ones((1, m), dtype=bool),
        keys=np.array([keys], dtype=np.int64),
        features=np.zeros((1, m, len(ANSWER_FEATURES)), dtype=np.float32),
        signatures=np.zeros((1, m, SIGNATURE_SIZE), dtype=np.uint64),
        ex_ante=np.array([rel]),
        prior=np.full((1, m), 0.5),
        text_score=np.zeros((1, m), dtype=np.float32),
    )


def test_agreement_counts_and_weighs_the_earlier_answers() -> None:
    table = _table([5, 5, 7, 0], [0.6, 0.9, 0.3, 0.8])     # model 3 gave no readable final answer
    earlier = np.array([[False, True, True, True], [False, False, False, False]])
    f = agreement_features(table, np.array([0, 0]), np.array([0, 0]), earlier)
    got = dict(zip(AGREEMENT_FEATURES, f[0]))
    assert got["n_earlier"] == 3 and got["n_agree"] == 1 and got["n_disagree"] == 1
    assert got["max_rel_agree"] == pytest.approx(0.9) and got["max_rel_disagree"] == pytest.approx(0.3)
    assert got["support"] == pytest.approx(np.log(0.9 / 0.1), rel=1e-4)
    assert got["distinct_earlier"] == 2 and got["plurality"] == 1 and got["in_plurality"] == 1
    assert not f[1].any()                                     # no earlier answers: all zero
    # the query's own model is never its own second opinion
    own = agreement_features(table, np.array([0]), np.array([0]), np.array([[True, False, False, False]]))
    assert own[0, AGREEMENT_FEATURES.index("n_earlier")] == 0


def test_earlier_sets_cover_first_answers_and_second_opinions() -> None:
    answered = np.array([[True, True, True, False], [True, False, False, False]])
    rows, models, earlier = earlier_sets(answered, singles=2, larger=1, seed=0)
    assert not earlier[np.arange(rows.size), models].any()
    assert not (earlier & ~answered[rows]).any()              # only models that answered
    for i, k in zip(*np.nonzero(answered)):
        mine = earlier[(rows == i) & (models == k)]
        assert (mine.sum(axis=1) == 0).sum() == 1             # exactly one first-answer query
        if i == 0:
            assert (mine.sum(axis=1) == 1).sum() == 2         # two single second opinions
    assert len({(r, k, e.tobytes()) for r, k, e in zip(rows, models, earlier)}) == rows.size


# -- fitting and predicting ----------------------------------------------------------------------

def test_a_second_answer_separates_right_from_wrong(gsm8k: tuple[PosthocEstimator, OutcomeMatrix, OutcomeMatrix]
                                                    ) -> None:
    est, _, test = gsm8k
    table = est.featurize(test.prompts, test.responses, tasks=test.tasks)
    k, other = est.model_names.index(MIXTRAL), est.model_names.index(GPT4)
    rows = np.arange(len(test.ids))
    y = test.scores[rows, k]
    alone = est.predict_table(table, rows, np.full(rows.size, k))
    earlier = np.zeros((rows.size, 2), dtype=bool)
    earlier[:, other] = True
    with_gpt4 = est.predict_table(table, rows, [MIXTRAL] * rows.size, earlier)
    assert np.all((alone >= 0) & (alone <= 1)) and np.all((with_gpt4 >= 0) & (with_gpt4 <= 1))
    auc_alone, auc_pair = within_task_auc(alone, y, None), within_task_auc(with_gpt4, y, None)
    assert auc_pair > 0.8 and auc_pair > auc_alone
    # calibrated on out-of-fold scores: the mean p is near the realised rate
    assert abs(with_gpt4.mean() - y.mean()) < 0.12 and abs(alone.mean() - y.mean()) < 0.12


def test_predict_from_text_matches_the_table(gsm8k: tuple[PosthocEstimator, OutcomeMatrix, OutcomeMatrix]) -> None:
    est, _, test = gsm8k
    assert test.responses is not None
    n = 8
    k, other = est.model_names.index(MIXTRAL), est.model_names.index(GPT4)
    table = est.featurize(test.prompts[:n], test.responses[:n], tasks=test.tasks[:n])
    earlier = np.zeros((n, 2), dtype=bool)
    earlier[::2, other] = True
    want = est.predict_table(table, np.arange(n), np.full(n, k), earlier)
    got = est.predict(test.prompts[:n], [MIXTRAL] * n, list(test.responses[:n, k]),
                      [{GPT4: test.responses[i, other]} if i % 2 == 0 else {} for i in range(n)],
                      tasks=test.tasks[:n])
    np.testing.assert_allclose(got, want)


def test_save_and_load_keep_the_predictions(gsm8k: tuple[PosthocEstimator, OutcomeMatrix, OutcomeMatrix],
                                            tmp_path: Path) -> None:
    est, _, test = gsm8k
    est.save(tmp_path / "posthoc.pkl")
    back = load_posthoc(tmp_path / "posthoc.pkl")
    table = est.featurize(test.prompts, test.responses)
    rows = np.arange(len(test.ids))
    np.testing.assert_array_equal(back.predict_table(back.featurize(test.prompts, test.responses), rows, [0] * rows.size),
                                  est.predict_table(table, rows, [0] * rows.size))
    assert back.label_counts == est.label_counts and back.params()["estimator"] == "posthoc"
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"magic": "switchyard-posthoc", "version": 0}))
    with pytest.raises(PredictorError, match="format version"):
        load_posthoc(tmp_path / "other.pkl")
    with pytest.raises(PredictorError, match="not a readable"):
        load_posthoc(tmp_path / "missing.pkl")


def test_the_ex_ante_feature_is_required_once_fitted_with_it() -> None:
    train, test = _split("gsm8k_sample")
    rng = np.random.default_rng(0)
    ex = np.clip(0.5 + 0.3 * (train.scores - 0.5) + 0.1 * rng.standard_normal(train.scores.shape), 0.05, 0.95)
    est = make_posthoc("posthoc-linear", use_text=False).fit(
        train.prompts, train.scores, train.responses, train.models, ex_ante_p=ex)
    assert est.fitted_with_ex_ante
    with pytest.raises(PredictorError, match="pass ex_ante_p"):
        est.featurize(test.prompts, test.responses)
    p = est.predict_table(est.featurize(test.prompts, test.responses, ex_ante_p=np.full(test.scores.shape, 0.7)),
                          np.arange(len(test.ids)), [0] * len(test.ids))
    assert np.isfinite(p).all()
    # and one fitted without it ignores it
    plain = make_posthoc("posthoc-linear", use_text=False).fit(train.prompts, train.scores, train.responses,
                                                                 train.models)
    a = plain.featurize(test.prompts, test.responses, ex_ante_p=np.full(test.scores.shape, 0.7))
    assert np.isnan(a.ex_ante).all()


def test_eleven_models_unanswered_cells_and_errors() -> None:
    train, test = _split("routerbench_sample")
    assert train.responses is not None and len(train.models) == 11
    est = make_posthoc("posthoc-linear").fit(train.prompts, train.scores, train.responses, train.models,
                                             tasks=train.tasks)
    n, m = len(test.ids), len(test.models)
    responses = test.responses.copy()
    responses[0, 3] = None                                     # model 3 has not run on job 0
    table = est.featurize(test.prompts, responses, tasks=test.tasks)
    rows = np.repeat(np.arange(n), m)
    models = np.tile(np.arange(m), n)
    everyone_else = np.ones((rows.size, m), dtype=bool)
    p = est.predict_table(table, rows, models, everyone_else)
    assert np.isnan(p[3]) and np.isfinite(np.delete(p, 3)).all()
    assert ((p[np.isfinite(p)] >= 0) & (p[np.isfinite(p)] <= 1)).all()
    assert est.predict_table(table, [], []).shape == (0,)
    with pytest.raises(PredictorError, match="unknown model"):
        est.predict_table(table, [0], ["gpt-5"])
    with pytest.raises(PredictorError, match="earlier has shape"):
        est.predict_table(table, [0], [0], np.zeros((1, 2), dtype=bool))
    with pytest.raises(PredictorError, match="same length"):
        est.predict(["q"], ["claude-v1"], ["A", "B"])
    with pytest.raises(PredictorError, match="responses has shape"):
        est.featurize(test.prompts, responses[:, :3])


def test_registry_and_fit_errors() -> None:
    assert {"posthoc", "posthoc-linear"} <= set(available_posthoc())
    with pytest.raises(UnknownPosthoc, match="choose one of"):
        make_posthoc("nope")
    with pytest.raises(PredictorError, match="unknown post-hoc features"):
        make_posthoc("posthoc", drop_features=["nope"])
    with pytest.raises(PredictorError, match="at least 20 graded answers"):
        make_posthoc("posthoc").fit(["a", "b"], np.array([[1.0], [0.0]]), np.array([["x"], ["y"]], dtype=object),
                                    ["m"])
    with pytest.raises(PredictorError, match="not fitted|fit"):
        make_posthoc("posthoc").featurize(["a"], [["x"]])


def test_fractional_scores_are_learnt_as_weighted_labels() -> None:
    rng = np.random.default_rng(1)
    n = 60
    answers = np.array([[f"#### {i % 7}", f"#### {(i % 7) if i % 3 else 99}"] for i in range(n)], dtype=object)
    scores = np.column_stack([np.full(n, 0.5), np.where(np.arange(n) % 3 == 0, 0.0, 1.0)])
    scores[rng.random(n) < 0.1, 0] = np.nan
    est = make_posthoc("posthoc", use_text=False).fit([f"q {i}" for i in range(n)], scores, answers, ["a", "b"],
                                                       keep_oof=True)
    p = est.predict_table(est.featurize([f"q {i}" for i in range(n)], answers), np.arange(n), np.ones(n, int))
    assert np.isfinite(p).all() and est.label_counts["a"] == int((~np.isnan(scores[:, 0])).sum())
    # the out-of-fold p of the training queries, for a cascade's planning; never saved
    assert est.oof_ is not None
    rows, models, earlier, p_oof = est.oof_
    assert rows.shape == models.shape == p_oof.shape and earlier.shape == (rows.size, 2)
    assert ((p_oof >= 0) & (p_oof <= 1)).all()
    assert pickle.loads(pickle.dumps(est)).oof_ is None


def test_cross_fitted_ex_ante_p_is_out_of_fold() -> None:
    train, _ = _split("gsm8k_sample")
    oof = cross_fit_ex_ante("eccos-r", train.prompts, train.scores, train.output_tokens, train.models,
                            tasks=train.tasks, folds=3)
    assert oof.shape == train.scores.shape and np.isfinite(oof).all()
    # a row's own outcome never reaches its p: scrambling one fold's outcomes leaves its p unchanged
    again = train.scores.copy()
    n = len(train.ids)
    _, first = next(KFold(3, shuffle=True, random_state=0).split(np.arange(n)))
    again[first] = 1.0 - again[first]
    assert not np.allclose(again, train.scores)
    oof2 = cross_fit_ex_ante("eccos-r", train.prompts, again, train.output_tokens, train.models,
                             tasks=train.tasks, folds=3)
    np.testing.assert_allclose(oof2[first], oof[first])
