//! The training initialisation of spec/MODEL.md, seeded (`--random-weights SEED`).
