"""Answer formats, defined once: how a completion states its answer, and so how it is extracted and graded.

Params name them (prompts.<p>.answer_format, evaluate.benchmarks.<name>.answer_format); config.py validates
against this tuple, benchmarks.py labels problems with it, grading.py and rewards.py dispatch on it. A module
of its own so that every stage can import it without importing the grader.
"""

FINAL_ANSWER = "final_answer"  # `**Final Answer:** N` (the seed's GSM8K format)
BOXED = "boxed"                # `\boxed{...}` (competition math, Tina / open-r1)
CHOICE = "choice"              # a letter A-D (GPQA)
ANSWER_FORMATS = (FINAL_ANSWER, BOXED, CHOICE)
