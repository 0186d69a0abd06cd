"""Stage 4: what the latent knows: features extracted once, probe heads, k-NN, the evaluation suite, export and predict."""
