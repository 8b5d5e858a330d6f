"""The answer vocabulary, defined once: how a completion reasons and states its answer, and so how the
answer is extracted and graded.

Params name the formats (prompts.<p>.answer_format, evaluate.benchmarks.<name>.answer_format); config.py
validates against ANSWER_FORMATS and builds its prompt defaults from the tags and the marker, benchmarks.py
labels problems with them, grading.py and rewards.py dispatch on them, prompts.py and chat.py write and
read the tags. A module of its own so that every stage can import it without importing the grader.
"""

FINAL_ANSWER = "final_answer"  # `**Final Answer:** N` (the seed's GSM8K format)
BOXED = "boxed"                # `\boxed{...}` (competition math, Tina / open-r1)
CHOICE = "choice"              # a letter A-D (GPQA)
ANSWER_FORMATS = (FINAL_ANSWER, BOXED, CHOICE)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"  # the reasoning block; only what follows it is graded
FINAL_ANSWER_MARKER = "**Final Answer:**"        # starts the answer line of the final_answer format
