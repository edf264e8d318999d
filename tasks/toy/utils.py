"""``!function`` helpers of the toy tasks: the data is built by quantsweep at load time."""

from quantsweep.toy.tasks import toy_gen_dataset, toy_mc2_dataset, toy_mc4_dataset, toy_ppl_dataset

__all__ = ["toy_gen_dataset", "toy_mc2_dataset", "toy_mc4_dataset", "toy_ppl_dataset"]
