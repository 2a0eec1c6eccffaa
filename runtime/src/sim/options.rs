//! The simulator's settings.

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// host threads running blocks (0 = all available cores)
    pub threads: usize,
    /// shared-memory race detection
    pub racecheck: bool,
    /// uninitialised shared-memory read detection
    pub initcheck: bool,
    /// per-block limit on executed warp instructions (catches infinite loops)
    pub max_warp_steps: u64,
    /// total bytes of device memory
    pub memory_bytes: u64,
    /// collect [`super::counters`] per launch ([`super::SimDevice::take_launch_counters`])
    pub counters: bool,
    /// run only this many blocks of each launch (all when the grid has no
    /// more): the first, the last and seeded random others, see [`super::sample_blocks`]
    pub sample_blocks: Option<u64>,
    pub sample_seed: u64,
    /// allocate device memory lazily: pages exist once written, and never
    /// written words read as values seeded by this (see [`super::mem`]); for
    /// sampled runs of plans larger than the host's memory
    pub lazy_memory: Option<u64>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            threads: 0,
            racecheck: true,
            initcheck: true,
            max_warp_steps: 1 << 32,
            memory_bytes: 16 << 30,
            counters: false,
            sample_blocks: None,
            sample_seed: 0,
            lazy_memory: None,
        }
    }
}

