//! A small deterministic random source for the unit tests' generated inputs.

/// xorshift64 from `seed` (nonzero): each call gives a number below its argument.
pub fn draws(mut seed: u64) -> impl FnMut(usize) -> usize {
    move |m: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % m as u64) as usize
    }
}
