//! `echo`: every byte back as it comes.

use super::{Context, Protocol};

/// Writes back every byte it receives, as soon as it receives it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl Protocol for Echo {
    fn on_read(&mut self, input: &[u8], ctx: &mut Context<'_>) -> usize {
        ctx.write(input);
        input.len()
    }
}
