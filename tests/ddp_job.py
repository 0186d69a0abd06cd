"""Started by test_mae_pretrain.py under torchrun: two latentprobe commands in one process group
(pretraining, then fine-tuning), so the test pays for one launch of two ranks, not two.

    torchrun --nproc_per_node 2 tests/ddp_job.py train ... --then finetune RUN ...
"""

import sys

from latentprobe.cli import main

if __name__ == "__main__":
    split = sys.argv.index("--then")
    main(sys.argv[1:split])
    main(sys.argv[split + 1:])
