"""On-device recommender from a saved global model, without any server.

    .venv/bin/python examples/device.py runs/default/runs/non-private-seed0 /tmp/my-phone.npz
"""

import sys

from fedrec.device import DeviceRecommender, load_global_params

run_dir, state = sys.argv[1], sys.argv[2]
params = load_global_params(run_dir)  # best_params.npz: the model of the round selected on validation
dev = DeviceRecommender.create(state, user=0, dim=params["item_embedding"].shape[1])
dev.fold_in(params, items=[49, 180, 257, 287, 293])  # a new user: five items it interacted with
ids, scores = dev.recommend(params, n=5)
print("top-5 for the new user:", ids.tolist(), [round(float(s), 3) for s in scores])

again = DeviceRecommender.open(state)  # the state survives a restart of the app
again.add_interactions([300])
again.refit(params)  # ranking embedding refit on all local data (never released: no noise needed)
print("after one more interaction:", again.recommend(params, n=5)[0].tolist())

from fedrec.config import FedConfig  # noqa: E402

# one round as the server would ask for it (the run's config, its mechanism resolved by the server)
run = FedConfig(dim=params["item_embedding"].shape[1], noise_multiplier=1.0, sample_rate=0.5, budget_epsilon=8.0)
released = again.train(params, run, server_round=1)
print("released item update rows:", released["item_embedding"].shape, "privacy spent:", again.privacy_spent())
