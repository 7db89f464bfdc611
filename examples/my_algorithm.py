"""Bring your own training algorithm: one class, run by fedrec's node round and Flower.

*Popularity pull*: each user pulls up the biases of the items it has interacted with.
A node's release for ``item_bias`` is the mean, over its users, of their training item
indicators (the change they make to the biases; the server's optimiser moves the
parameters along the mean of the releases); every other global parameter and the users'
local state are left as they are.  With the server's plain SGD step at rate 1
(``--server-opt sgd --server-lr 1``: ``params + update``), each round adds every item's
share of users who interacted with it to its bias: MF turns into a federated most-popular
ranking.  fedrec's node round samples the users, cuts them into batches, weighs and
averages the batches' results and builds the release; the composed server aggregates it.

It ships with fedrec, so it runs from any directory::

    fedrec simulate --algorithm fedrec_app.examples.my_algorithm:PopularityPull --server-opt sgd \
        --server-lr 1 --data synthetic:200x100:0 --rounds 5 --users-per-node 50 --out runs/my-algorithm

It implements no DP mechanism (``privacy_units`` is empty), so a run with either unit of
DP refuses it in one line.  A copy of this file of your own runs as
``--algorithm path/to/my_algorithm.py:PopularityPull``.
"""

import numpy as np
import torch

from fedrec.federated.algorithms import TrainedUsers, TrainingAlgorithm, UserBatch


class PopularityPull(TrainingAlgorithm):
    """Release the mean item indicator of the batch's users for ``item_bias``, zeros elsewhere."""

    name = "popularity-pull"

    def problem(self, cfg, model_class):
        return None if cfg.model == "mf" else "it pulls MF's item biases: use model 'mf'"

    def train_users(self, batch: UserBatch) -> TrainedUsers:
        touched = (batch.fed.split.train[batch.users] > 0).toarray().astype(np.float64)  # (users, items)
        share = np.average(touched, axis=0, weights=batch.weights)
        update = {n: torch.zeros_like(v) for n, v in batch.params.items()}
        update["item_bias"] = torch.as_tensor(share, dtype=torch.float32)
        return TrainedUsers(update=update, local=batch.local)
