"""Every loss notellm trains with, as small modules that take tensors (sentence-transformers style).

| loss | module | inputs | used by |
|---|---|---|---|
| GCL (in-batch InfoNCE, learnable scale) | `GenerativeContrastiveLoss` | embeddings of B pairs (a_i, b_i), optional note keys, optional hard negatives + their keys, optional false-negative margin | NoteLLM, NoteLLM-2 |
| masked GCL (mICL image loss) | `MaskedGenerativeContrastiveLoss` | image embeddings of B pairs, per-pair validity | NoteLLM-2 |
| CSFT (next-token CE on answers) | `CollaborativeSFTLoss` | answer-position logits, their labels | NoteLLM, NoteLLM-2 |
| GCL + CSFT: (L_cl + a L_gen)/(1+a) | `NoteLLMLoss` | the inputs of both | NoteLLM |
| mICL + CSFT | `MultimodalLoss` | the inputs of both, image embeddings | NoteLLM-2 |
| answer NLL (instruction SFT) | `AnswerNLLLoss` | answer-token log-probabilities, mask | cold-start SFT |
| MSE / Huber regression | `RegressionLoss` | predictions, standardised targets | popularity (RedNoob) |
| DPO / DPOP / IDPOP | `PreferenceLoss` (+ `idpop_mu`) | summed log pi and log pi_ref of chosen / rejected answers, per-pair mu | cold-start alignment |

Each gives the same value and gradients for a global batch on one process as spread over several (tested).
"""

from notellm.losses.combined import MultimodalLoss, NoteLLMLoss
from notellm.losses.contrastive import GenerativeContrastiveLoss, MaskedGenerativeContrastiveLoss
from notellm.losses.generative import AnswerNLLLoss, CollaborativeSFTLoss
from notellm.losses.preference import PreferenceLoss, error_range, idpop_mu
from notellm.losses.regression import RegressionLoss

__all__ = [
    "AnswerNLLLoss", "CollaborativeSFTLoss", "GenerativeContrastiveLoss", "MaskedGenerativeContrastiveLoss",
    "MultimodalLoss", "NoteLLMLoss", "PreferenceLoss", "RegressionLoss", "error_range", "idpop_mu",
]
