"""Figure 1 of the paper (Sec. 4.1), the MNIST network trained with and without BN, and Santurkar
et al. (2018)'s measurements on it: `bn-repro figure1` (command.py) and Figure 1's part of
`bn-repro report` (report.py). The package uses the shared layers (the paper's numbers, the
schema's rules, Hydra's composition, the records, the input probe, BN's layers and Algorithm 2)
and none of them imports it.

config.py is its schema and compose.py composes configs/figure1.yaml into it; data.py reads the
digits, model.py builds the network, training.py trains it and santurkar.py measures it;
report.py draws the runs' records. Nothing is imported here, so that the command's `--help` and
a mistyped key wait for neither torch nor Hydra."""
