"""A batch job with Ray Data: chat conversations in a parquet file in, completions out.

    python examples/batch_job.py [MODEL_DIR] [OUTPUT_DIR]

Without a model directory it writes a tiny random Llama first (no download). Run it twice on
the same OUTPUT_DIR: the second run finds every row written and generates nothing.
The same job from the shell:

    tideflow batch --input questions.parquet --output out/ --model MODEL_DIR \
        --messages-column messages --id-column id --max-tokens 16
"""

import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tideflow import SamplingParams
from tideflow.batch import run_job
from tideflow.testing.tiny_models import write_tiny_model

model = sys.argv[1] if len(sys.argv) > 1 else str(write_tiny_model("llama", tempfile.mkdtemp()))
output = Path(sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp())

questions = ["What is a list?", "Write a haiku about rivers", "Explain recursion", "Name three colors",
             "Sort [3, 1, 2]", "Say hello in French"]
table = pa.table({
    "id": [f"q{i}" for i in range(len(questions))],
    "messages": [[{"role": "user", "content": q}] for q in questions],  # list<struct<role, content>>
})
source = output.parent / f"{output.name}-input" / "questions.parquet"
source.parent.mkdir(parents=True, exist_ok=True)
pq.write_table(table, source)

summary = run_job(
    source, output, model, messages_column="messages", id_column="id",
    sampling_params=SamplingParams(temperature=0, max_tokens=16), engine_options={"dtype": "float32"}, batch_size=3,
)
print(summary.format())
for row in sorted(pq.read_table(output, columns=["id", "generated_text", "finish_reason"]).to_pylist(),
                  key=lambda r: r["id"]):
    print(f"{row['id']}: {row['generated_text']!r} ({row['finish_reason']})")
