//! A small deterministic random generator (xorshift64*), so randomized tests reproduce from
//! their seed. Dependency-free and free of crate imports: the integration tests include this
//! same file (`#[path]`), so unit and integration tests share one generator.

pub struct Rng(u64);

#[allow(dead_code)] // each test binary uses its own subset
impl Rng {
    /// Any seed works, 0 included: it is spread and made odd first.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n`; `n` must not be 0.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}
