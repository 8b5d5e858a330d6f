"""The CPU profile's learning task (tinyreason/addition.py): the vendored files are its output, train
and test never overlap, and the prepare stage reads both through the ordinary GSM8K readers."""

from __future__ import annotations

from tinyreason import addition
from tinyreason.benchmarks import load_benchmark
from tinyreason.data import load_gsm8k


def test_vendored_files_are_the_generator_output():
    for path, text in addition.file_texts().items():
        assert path.read_text() == text, f"{path} is stale (fix: python -m tinyreason.addition)"


def test_train_and_test_are_disjoint_and_cover_every_single_digit_sum():
    train, test = addition.split_pairs()
    assert len(train) == 68 and len(test) == addition.N_TEST == 32
    assert not set(train) & set(test)
    assert set(train) | set(test) == {(a, b) for a in range(10) for b in range(10)}


def test_files_load_as_gsm8k_rows_and_as_the_addition_benchmark():
    examples, dropped = load_gsm8k(str(addition.TRAIN_FILE))
    assert dropped == 0 and len(examples) == 68
    assert examples[0].question == "What is 3 + 3?" and examples[0].reasoning == "3 + 3 = 6" and examples[0].answer == "6"
    problems = load_benchmark("addition")
    assert len(problems) == 32 and all(p.answer_format == "final_answer" for p in problems)
    a, b = (int(x) for x in problems[0].question.removeprefix("What is ").removesuffix("?").split(" + "))
    assert problems[0].gold == str(a + b)
    assert not {e.question for e in examples} & {p.question for p in problems}
