//! A streaming step must not allocate: the state carries every buffer it needs. This test binary installs
//! the counting allocator and checks the allocation count over many steps.

use effseq::bench::alloc::{thread_calls, CountingAllocator};
use effseq::config::ModelKind;
use effseq::rnn::{Rnn, RnnConfig};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[test]
fn rnn_step_does_not_allocate() {
    for kind in [ModelKind::Lstm, ModelKind::Gru] {
        for (b, h, layers) in [(1, 256, 1), (4, 32, 2)] {
            let cfg = RnnConfig { kind, input: h, hidden: h, layers, bidirectional: false, dropout: 0.0, bias: true };
            let mut rnn = Rnn::new(&cfg, 0).unwrap();
            let mut state = rnn.zero_state(b);
            let x = vec![0.5f32; b * h];
            let mut y = vec![0.0f32; b * h];
            rnn.step(&x, &mut state, &mut y).unwrap(); // first step may pack weights
            let before = thread_calls();
            for _ in 0..100 {
                rnn.step(&x, &mut state, &mut y).unwrap();
            }
            // Counted on this thread: the harness's own threads allocate at their leisure.
            assert_eq!(thread_calls() - before, 0, "{kind:?} B={b} H={h}: step allocated");
        }
    }
}
