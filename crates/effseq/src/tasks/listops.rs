//! ListOps, the long-sequence classification task of the Long Range Arena (Tay et al. 2020, "Long Range Arena: A
//! Benchmark for Efficient Transformers", sec. 2.2.1; after Nangia & Bowman 2018).
//!
//! A sequence is a nested list expression over the digits 0-9 with four operators, in prefix notation with a closing
//! bracket, e.g. `[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]` (value 5). The model reads the tokens and classifies
//! the value of the whole expression (10 classes). Operators:
//!
//! - `MAX`, `MIN`: the largest and the smallest argument;
//! - `MED`: the median; for an even count the integer part of the mean of the two middle values
//!   (`int(numpy.median(args))`, as the published generator computes it);
//! - `SM`: the sum of the arguments modulo 10.
//!
//! Generation follows the published generator (`generate_tree` of the LRA code): a node at depth `d` (the root has
//! depth 1) draws `r ~ U(0, 1)` while `d < 10` and takes `r = 1` at depth 10; if `r > 0.25` it is a leaf digit drawn
//! uniformly, otherwise an operator, drawn uniformly, with `randint(2, 10)` (inclusive) children at depth `d + 1`.
//! The length of a tree is its token count (a leaf 1, an operator 2 plus its children); a tree is kept only if
//! `min_len < length < max_len` (strict) and it is not already in the set (deduplicated over the training and the
//! test set together, so the test set is disjoint from the training set).
//!
//! The published setting is `500 < length < 2000` with 96,000 training, 2,000 validation and 2,000 test sequences
//! ([`PUBLISHED_MIN_LEN`], [`PUBLISHED_MAX_LEN`], [`PUBLISHED_TRAIN_SIZE`], [`PUBLISHED_EVAL_SIZE`]); those
//! sizes take a few seconds to generate and about 100 MB, so the caller chooses the sizes and, for quick runs, a
//! shorter `max_len` (the lower bound then defaults to `max_len / 4`, which is 500 for 2,000).
//!
//! Tokens ([`VOCAB`] = 16 ids): [`PAD`] = 0, the digit `d` is `1 + d`, then `[MAX`, `[MIN`, `[MED`, `[SM` and `]`.
//! Batches are right-padded with [`PAD`] to their longest sequence and carry each sequence's length
//! ([`PaddedBatch`]), so a model can read its prediction at the last real token.
//!
//! Published accuracies (LRA Table 1): Transformer 36.37, Reformer 37.27, Performer 18.01, Linear Transformer 16.13,
//! Synthesizer 36.99, BigBird 36.05; S4 59.60 (Gu et al. 2022). Trivial baseline: always answering the most frequent
//! class (0 or 9, which `MAX` and `MIN` favour) scores about 17%; chance is 10%.

use std::collections::HashSet;

use rand::Rng as _;
use rayon::prelude::*;

use crate::data::EpochSampler;
use crate::error::{check_len, Error, Result};
use crate::layers::loss::{self, CrossEntropyOut};
use crate::rng::{rng_for, streams, Rng};
use crate::tasks::{Batch, InputKind, Inputs, Readout, Targets, TaskIo};

/// The padding token.
pub const PAD: u32 = 0;
/// Token of the digit 0; the digit `d` is `DIGIT_0 + d`.
pub const DIGIT_0: u32 = 1;
/// The closing bracket `]`.
pub const CLOSE: u32 = 15;
/// Vocabulary size V: padding, 10 digits, 4 operators and `]`.
pub const VOCAB: usize = 16;
/// Number of classes: the values 0-9.
pub const CLASSES: usize = 10;
/// Deepest level of the tree; nodes at this depth (the root has depth 1) are leaves.
pub const MAX_DEPTH: usize = 10;
/// Most arguments of one operator (at least 2).
pub const MAX_ARGS: usize = 10;
/// A node below [`MAX_DEPTH`] is a leaf when its draw `r ~ U(0, 1)` exceeds this, an operator otherwise.
pub const LEAF_THRESHOLD: f64 = 0.25;
/// Published lower length bound (exclusive).
pub const PUBLISHED_MIN_LEN: usize = 500;
/// Published upper length bound (exclusive); inputs are at most `PUBLISHED_MAX_LEN - 1` tokens long.
pub const PUBLISHED_MAX_LEN: usize = crate::config::LISTOPS_PUBLISHED_MAX_LEN;
/// Published number of training sequences.
pub const PUBLISHED_TRAIN_SIZE: usize = 96_000;
/// Published number of test (and of validation) sequences.
pub const PUBLISHED_EVAL_SIZE: usize = 2_000;
/// Largest accepted `max_len`.
pub const MAX_SUPPORTED_LEN: usize = 8192;

/// Accepted candidates each generation chunk draws, from its own random stream.
const CHUNK: usize = 64;
/// A chunk that needs more attempts than this per accepted candidate means the length window is (nearly)
/// impossible to hit; generation then stops with an error.
const MAX_ATTEMPTS_PER_ACCEPTED: usize = 100_000;
/// First random stream of the generation chunks: chunk `c` draws from `rng_for(seed, GENERATION_STREAM + c)`.
const GENERATION_STREAM: u64 = streams::EVAL_DATA;

/// The four list operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// The largest argument.
    Max,
    /// The smallest argument.
    Min,
    /// The median; for an even count the integer part of the mean of the two middle values.
    Med,
    /// The sum modulo 10.
    Sm,
}

impl Operator {
    /// All operators, in token order.
    pub const ALL: [Operator; 4] = [Operator::Max, Operator::Min, Operator::Med, Operator::Sm];

    /// The operator's token id (11 to 14).
    pub fn token(self) -> u32 {
        match self {
            Operator::Max => 11,
            Operator::Min => 12,
            Operator::Med => 13,
            Operator::Sm => 14,
        }
    }

    /// The operator of a token id, if it is one.
    pub fn from_token(token: u32) -> Option<Operator> {
        Operator::ALL.into_iter().find(|op| op.token() == token)
    }

    /// The opening text of the operator, e.g. `[MAX`.
    pub fn text(self) -> &'static str {
        match self {
            Operator::Max => "[MAX",
            Operator::Min => "[MIN",
            Operator::Med => "[MED",
            Operator::Sm => "[SM",
        }
    }

    /// The value of the operator over `args` (digits 0-9, at least one); `args` may be reordered.
    pub fn apply(self, args: &mut [u8]) -> u8 {
        match self {
            Operator::Max => args.iter().copied().max().unwrap_or(0),
            Operator::Min => args.iter().copied().min().unwrap_or(0),
            Operator::Med => {
                args.sort_unstable();
                let n = args.len();
                if n == 0 {
                    0
                } else if n % 2 == 1 {
                    args[n / 2]
                } else {
                    // Digits are non-negative, so integer division is the integer part of the mean.
                    (args[n / 2 - 1] + args[n / 2]) / 2
                }
            }
            Operator::Sm => (args.iter().map(|&v| u32::from(v)).sum::<u32>() % 10) as u8,
        }
    }
}

/// The token id of digit `d` (0-9).
pub fn digit_token(d: u8) -> u32 {
    DIGIT_0 + u32::from(d)
}

/// The tokens of an expression in the published text form, e.g. `"[MAX 2 9 [MIN 4 7 ] 0 ]"`. Round brackets (the
/// published TSV files keep the Python tuple structure in them) are ignored; anything else that is not a digit, an
/// operator or `]` is an error.
pub fn tokenize(text: &str) -> Result<Vec<u32>> {
    text.split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter(|word| !word.is_empty())
        .map(|word| match word {
            "]" => Ok(CLOSE),
            _ if word.len() == 1 && word.as_bytes()[0].is_ascii_digit() => Ok(digit_token(word.as_bytes()[0] - b'0')),
            _ => Operator::ALL
                .into_iter()
                .find(|op| op.text() == word)
                .map(Operator::token)
                .ok_or_else(|| Error::Invalid(format!("listops: unknown token '{word}' (expected a digit, [MAX, [MIN, [MED, [SM or ])"))),
        })
        .collect()
}

/// The text form of `tokens` (padding is written as `_`).
pub fn to_text(tokens: &[u32]) -> String {
    let words: Vec<String> = tokens
        .iter()
        .map(|&t| match t {
            PAD => "_".to_string(),
            CLOSE => "]".to_string(),
            t if (DIGIT_0..DIGIT_0 + 10).contains(&t) => (t - DIGIT_0).to_string(),
            t => Operator::from_token(t).map_or_else(|| format!("<{t}>"), |op| op.text().to_string()),
        })
        .collect();
    words.join(" ")
}

/// The value (0-9) of the expression `tokens` (no padding), with a stack of open operators: a digit pushes its
/// value, `]` replaces the values since the innermost open operator by the operator's result. A malformed
/// expression (unbalanced brackets, an operator without arguments, padding or an unknown id, more than one value at
/// the top level) is an [`Error::Invalid`].
pub fn evaluate(tokens: &[u32]) -> Result<u8> {
    let bad = |pos: usize, why: &str| Error::Invalid(format!("listops: malformed expression at token {pos}: {why}"));
    let mut values: Vec<u8> = Vec::new(); // argument values of every open operator, innermost last
    let mut open: Vec<(Operator, usize)> = Vec::new(); // (operator, index of its first argument in `values`)
    for (pos, &token) in tokens.iter().enumerate() {
        match token {
            t if (DIGIT_0..DIGIT_0 + 10).contains(&t) => values.push((t - DIGIT_0) as u8),
            CLOSE => {
                let (op, first) = open.pop().ok_or_else(|| bad(pos, "']' without an open operator"))?;
                if values.len() == first {
                    return Err(bad(pos, "an operator without arguments"));
                }
                let value = op.apply(&mut values[first..]);
                values.truncate(first);
                values.push(value);
            }
            t => {
                let op = Operator::from_token(t).ok_or_else(|| bad(pos, &format!("token id {t} is not a digit, an operator or ']'")))?;
                open.push((op, values.len()));
            }
        }
    }
    match (open.is_empty(), values.as_slice()) {
        (true, &[value]) => Ok(value),
        (false, _) => Err(bad(tokens.len(), "an operator is not closed")),
        (true, []) => Err(bad(0, "empty expression")),
        (true, _) => Err(bad(tokens.len(), "more than one value at the top level")),
    }
}

/// One generated sequence: its tokens (ids below [`VOCAB`], no padding) and its value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Example {
    /// Token ids.
    pub tokens: Vec<u8>,
    /// The value of the expression, the class.
    pub label: u8,
}

/// Grows one subtree at `depth` into `tokens` and pushes its value onto `values`, as the published
/// `generate_tree`. Returns false, leaving the buffers half-written, as soon as the tree has `limit` tokens: its final
/// length can only be larger, so it would be rejected anyway (the accepted trees keep their distribution).
fn grow(rng: &mut Rng, depth: usize, limit: usize, tokens: &mut Vec<u8>, values: &mut Vec<u8>) -> bool {
    let r: f64 = if depth < MAX_DEPTH { rng.random() } else { 1.0 };
    if r > LEAF_THRESHOLD {
        let value = rng.random_range(0..10u8);
        tokens.push(digit_token(value) as u8);
        values.push(value);
        return tokens.len() < limit;
    }
    let args = rng.random_range(2..=MAX_ARGS);
    // The published code draws the operator after the children; the draws are independent, so the order does not
    // change the distribution.
    let op = Operator::ALL[rng.random_range(0..Operator::ALL.len())];
    tokens.push(op.token() as u8);
    let first = values.len();
    for _ in 0..args {
        if !grow(rng, depth + 1, limit, tokens, values) {
            return false;
        }
    }
    tokens.push(CLOSE as u8);
    let value = op.apply(&mut values[first..]);
    values.truncate(first);
    values.push(value);
    tokens.len() < limit
}

/// `CHUNK` trees with `min_len < length < max_len` drawn from `rng_for(seed, GENERATION_STREAM + chunk)`.
fn generate_chunk(seed: u64, chunk: u64, min_len: usize, max_len: usize) -> Result<Vec<Example>> {
    let mut rng = rng_for(seed, GENERATION_STREAM.wrapping_add(chunk));
    let mut out = Vec::with_capacity(CHUNK);
    let mut tokens = Vec::with_capacity(max_len); // the tree being drawn
    let mut values = Vec::with_capacity(MAX_DEPTH * MAX_ARGS); // argument values of its open operators
    let mut attempts = 0usize;
    while out.len() < CHUNK {
        attempts += 1;
        if attempts > CHUNK * MAX_ATTEMPTS_PER_ACCEPTED {
            return Err(Error::config(format!(
                "listops: after {attempts} trees, only {} had a length in ({min_len}, {max_len}); choose a wider length window",
                out.len()
            )));
        }
        tokens.clear();
        values.clear();
        if grow(&mut rng, 1, max_len, &mut tokens, &mut values) && tokens.len() > min_len {
            out.push(Example { tokens: tokens.clone(), label: values[0] });
        }
    }
    Ok(out)
}

/// The first `count` distinct trees of the chunk streams `0, 1, 2, ...` of `seed`, in chunk order. Chunks are drawn
/// in parallel, but each depends only on `(seed, chunk)`, so the result does not depend on the number of threads.
fn generate_distinct(seed: u64, count: usize, min_len: usize, max_len: usize) -> Result<Vec<Example>> {
    let mut seen: HashSet<Vec<u8>> = HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    let mut next_chunk = 0u64;
    while out.len() < count {
        let drawn = next_chunk as usize * CHUNK;
        // Duplicates are rare in the usual windows; a window with too few distinct trees is refused.
        if drawn > 4 * count + 64 * CHUNK {
            return Err(Error::config(format!(
                "listops: only {} distinct sequences with lengths in ({min_len}, {max_len}) among {drawn} drawn, {count} needed; widen the window",
                out.len()
            )));
        }
        let missing = count - out.len();
        let chunks = missing.div_ceil(CHUNK).max(rayon::current_num_threads()) as u64;
        let drawn: Vec<Vec<Example>> =
            (next_chunk..next_chunk + chunks).into_par_iter().map(|c| generate_chunk(seed, c, min_len, max_len)).collect::<Result<_>>()?;
        next_chunk += chunks;
        for example in drawn.into_iter().flatten() {
            if out.len() == count {
                break;
            }
            if seen.insert(example.tokens.clone()) {
                out.push(example);
            }
        }
    }
    Ok(out)
}

/// A batch of right-padded token sequences with the length of each. `batch.inputs` are `Tokens (B, T)` with `T`
/// the longest length in the batch and [`PAD`] after each sequence's end, `batch.targets` are `Classes (B)`.
#[derive(Clone, Debug, PartialEq)]
pub struct PaddedBatch {
    /// The padded batch.
    pub batch: Batch,
    /// The unpadded length of each sequence, `(B)`.
    pub lengths: Vec<usize>,
}

/// Which generated set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The training set.
    Train,
    /// The test set, the evaluation set.
    Test,
}

/// The ListOps task: a fixed, seeded training set and test set.
#[derive(Clone, Debug)]
pub struct ListOps {
    /// Lengths are greater than this.
    min_len: usize,
    /// Lengths are smaller than this.
    max_len: usize,
    /// The training sequences.
    train: Vec<Example>,
    /// The test sequences, none of which is in `train`.
    test: Vec<Example>,
    /// Order of the training sequences in the batches.
    sampler: EpochSampler,
    /// Seed of the generation and of the training order.
    seed: u64,
}

impl ListOps {
    /// The default lower length bound for `max_len`: `max_len / 4` (500 for the published 2,000).
    pub fn default_min_len(max_len: usize) -> usize {
        max_len / 4
    }

    /// The task with lengths in `(max_len / 4, max_len)`, `train_size` training and `eval_size` test sequences,
    /// generated from `seed`. The published setting is `ListOps::new(2000, 96_000, 2_000, seed)`.
    pub fn new(max_len: usize, train_size: usize, eval_size: usize, seed: u64) -> Result<Self> {
        Self::with_bounds(Self::default_min_len(max_len), max_len, train_size, eval_size, seed)
    }

    /// The task with lengths `min_len < length < max_len`. The sequences come from one seeded stream of distinct
    /// trees: the first `eval_size` form the test set (so it does not depend on `train_size`), the next
    /// `train_size` the training set.
    pub fn with_bounds(min_len: usize, max_len: usize, train_size: usize, eval_size: usize, seed: u64) -> Result<Self> {
        if max_len > MAX_SUPPORTED_LEN || min_len + 2 > max_len {
            return Err(Error::config(format!(
                "listops: the length window ({min_len}, {max_len}) must hold at least one length and max_len be at most {MAX_SUPPORTED_LEN}"
            )));
        }
        if train_size == 0 || eval_size == 0 {
            return Err(Error::config("listops: the training and the test set need at least one sequence each"));
        }
        let mut all = generate_distinct(seed, eval_size + train_size, min_len, max_len)?;
        let train = all.split_off(eval_size);
        let sampler = EpochSampler::new(train.len(), seed, streams::TRAIN_DATA)?;
        Ok(ListOps { min_len, max_len, train, test: all, sampler, seed })
    }

    /// What the model reads and emits: one token of V = 16 per step, 10 class logits from the last step.
    pub fn io() -> TaskIo {
        TaskIo { input: InputKind::Tokens { vocab: VOCAB }, output_dim: CLASSES, readout: Readout::LastStep }
    }

    /// Lengths are greater than this.
    pub fn min_len(&self) -> usize {
        self.min_len
    }

    /// Lengths are smaller than this.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The seed of the data.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Number of training sequences.
    pub fn train_size(&self) -> usize {
        self.train.len()
    }

    /// Number of test sequences, the evaluation set.
    pub fn eval_size(&self) -> usize {
        self.test.len()
    }

    /// The sequences of `split`.
    pub fn examples(&self, split: Split) -> &[Example] {
        match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        }
    }

    /// How many sequences of `split` have each value.
    pub fn class_counts(&self, split: Split) -> [usize; CLASSES] {
        let mut counts = [0usize; CLASSES];
        for example in self.examples(split) {
            counts[usize::from(example.label)] += 1;
        }
        counts
    }

    /// The training batch of `step`: the same for every run with this seed, so a resumed run sees the same data.
    /// The batches walk seeded epoch permutations of the training set.
    pub fn train_batch(&self, step: u64, batch: usize) -> PaddedBatch {
        let indices = self.sampler.indices(step, batch);
        Self::pad(indices.iter().map(|&i| &self.train[i]))
    }

    /// Test sequences `start..start + count` (clipped to [`ListOps::eval_size`]) as one batch.
    pub fn eval_batch(&self, start: usize, count: usize) -> PaddedBatch {
        let start = start.min(self.test.len());
        let end = start.saturating_add(count).min(self.test.len());
        Self::pad(self.test[start..end].iter())
    }

    /// The examples as one batch, right-padded with [`PAD`] to the longest.
    fn pad<'a>(examples: impl ExactSizeIterator<Item = &'a Example> + Clone) -> PaddedBatch {
        let count = examples.len();
        let longest = examples.clone().map(|e| e.tokens.len()).max().unwrap_or(0);
        let mut tokens = vec![PAD; count * longest]; // (B, T) token ids, padded
        let mut labels = Vec::with_capacity(count); // (B) classes
        let mut lengths = Vec::with_capacity(count); // (B) unpadded lengths
        for (row, example) in tokens.chunks_exact_mut(longest.max(1)).zip(examples) {
            for (slot, &token) in row.iter_mut().zip(&example.tokens) {
                *slot = u32::from(token);
            }
            labels.push(i32::from(example.label));
            lengths.push(example.tokens.len());
        }
        let batch = Batch { batch: count, seq_len: longest, inputs: Inputs::Tokens(tokens), targets: Targets::Classes(labels), lengths: Some(lengths.clone()) };
        PaddedBatch { batch, lengths }
    }

    /// Cross-entropy of `logits (B, 10)` on `batch` with the number of counted and correct predictions.
    pub fn score(&self, logits: &[f32], batch: &Batch) -> Result<CrossEntropyOut> {
        check_len("listops logits", &[batch.batch, CLASSES], logits.len())?;
        let Targets::Classes(targets) = &batch.targets else {
            return Err(Error::Invalid("listops batches carry class targets".into()));
        };
        loss::cross_entropy(logits, targets, CLASSES)
    }

    /// The most frequent class of the training set (the lowest on ties) and the test accuracy of always answering
    /// it.
    pub fn majority_baseline(&self) -> (u8, f64) {
        let counts = self.class_counts(Split::Train);
        let majority = (0..CLASSES).fold(0, |best, c| if counts[c] > counts[best] { c } else { best });
        (majority as u8, self.class_counts(Split::Test)[majority] as f64 / self.test.len() as f64)
    }

    /// One line on the setting and the score of the trivial strategy, to judge a result against.
    pub fn baseline_note(&self) -> String {
        let (majority, accuracy) = self.majority_baseline();
        format!(
            "baseline: always answering the most frequent training class ({majority}) gives test accuracy {accuracy:.3} (chance 0.100); \
             lengths {}..{} tokens ({} < length < {}; published: 500 < length < 2000), {} training and {} test sequences (published: 96,000 and 2,000)",
            self.min_len + 1,
            self.max_len - 1,
            self.min_len,
            self.max_len,
            self.train.len(),
            self.test.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent oracle: recursive descent over the tokens, the median through f64 and truncation as
    /// `int(numpy.median(args))` in the published generator.
    fn oracle(tokens: &[u8], pos: &mut usize) -> u8 {
        let token = u32::from(tokens[*pos]);
        *pos += 1;
        if (DIGIT_0..DIGIT_0 + 10).contains(&token) {
            return (token - DIGIT_0) as u8;
        }
        let op = Operator::from_token(token).expect("an operator");
        let mut args = Vec::new();
        while u32::from(tokens[*pos]) != CLOSE {
            args.push(f64::from(oracle(tokens, pos)));
        }
        *pos += 1;
        args.sort_by(f64::total_cmp);
        let n = args.len();
        let value = match op {
            Operator::Max => args[n - 1],
            Operator::Min => args[0],
            Operator::Med if n % 2 == 1 => args[n / 2],
            Operator::Med => (args[n / 2 - 1] + args[n / 2]) / 2.0,
            Operator::Sm => args.iter().sum::<f64>() % 10.0,
        };
        value.trunc() as u8
    }

    fn eval_text(text: &str) -> u8 {
        evaluate(&tokenize(text).unwrap()).unwrap()
    }

    #[test]
    fn evaluator_on_hand_written_expressions() {
        assert_eq!(eval_text("7"), 7);
        assert_eq!(eval_text("[MAX 2 9 4 ]"), 9);
        assert_eq!(eval_text("[MIN 5 3 8 ]"), 3);
        assert_eq!(eval_text("[MED 9 1 5 ]"), 5, "odd count: the middle value");
        assert_eq!(eval_text("[MED 1 2 3 4 ]"), 2, "even count: int((2 + 3) / 2) = 2");
        assert_eq!(eval_text("[MED 9 0 8 1 ]"), 4, "even count, unsorted: int((1 + 8) / 2) = 4");
        assert_eq!(eval_text("[MED 6 8 ]"), 7);
        assert_eq!(eval_text("[SM 5 7 9 ]"), 1, "21 mod 10");
        assert_eq!(eval_text("[SM 0 0 ]"), 0);
        assert_eq!(eval_text("[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]"), 5, "the LRA paper's example");
        assert_eq!(eval_text("[SM [MAX 1 2 ] [MIN 8 9 ] [MED 3 4 ] ]"), 3, "2 + 8 + 3 = 13");
        assert_eq!(eval_text("[MED [SM 9 9 ] [MAX 0 1 ] [MIN 7 9 ] [MED 2 2 ] ]"), 4, "args 8, 1, 7, 2: int((2 + 7) / 2)");
        // The published TSV form with the tuple brackets.
        assert_eq!(eval_text("( ( ( ( [MAX 2 ) 9 ) [MIN 4 7 ] ) ] )"), 9);
        for text in ["", "]", "[MAX 1 2", "[MAX ]", "1 2", "[MIN 1 ] ]"] {
            let tokens = tokenize(text).unwrap();
            assert!(matches!(evaluate(&tokens), Err(Error::Invalid(_))), "'{text}' is malformed");
        }
        assert!(evaluate(&[Operator::Max.token(), digit_token(1), PAD, CLOSE]).is_err(), "padding inside an expression");
        assert!(tokenize("[MAX 12 ]").is_err() && tokenize("[AVG 1 ]").is_err());
        let text = "[MAX 4 3 [MIN 2 3 ] 1 0 ]";
        assert_eq!(to_text(&tokenize(text).unwrap()), text);
    }

    #[test]
    fn generation_is_deterministic_and_seeded() {
        let a = ListOps::new(128, 200, 50, 7).unwrap();
        let b = ListOps::new(128, 200, 50, 7).unwrap();
        assert_eq!((a.train.clone(), a.test.clone()), (b.train.clone(), b.test.clone()));
        assert_eq!(a.train_batch(3, 16), b.train_batch(3, 16));
        assert_ne!(a.train_batch(3, 16), a.train_batch(4, 16));
        let other = ListOps::new(128, 200, 50, 8).unwrap();
        assert_ne!(a.test, other.test);
        // The test set is the head of the stream: a larger training set leaves it unchanged.
        assert_eq!(ListOps::new(128, 400, 50, 7).unwrap().test, a.test);
        // The result does not depend on the number of threads.
        let single = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| ListOps::new(128, 200, 50, 7).unwrap());
        assert_eq!((single.train, single.test), (a.train, a.test));
    }

    #[test]
    fn lengths_labels_and_no_duplicates() {
        let task = ListOps::with_bounds(40, 300, 500, 200, 1).unwrap();
        assert_eq!((task.train_size(), task.eval_size(), task.min_len(), task.max_len()), (500, 200, 40, 300));
        let mut seen = HashSet::new();
        for example in task.examples(Split::Train).iter().chain(task.examples(Split::Test)) {
            assert!((41..300).contains(&example.tokens.len()), "length {}", example.tokens.len());
            let tokens: Vec<u32> = example.tokens.iter().map(|&t| u32::from(t)).collect();
            assert_eq!(evaluate(&tokens).unwrap(), example.label, "{}", to_text(&tokens));
            assert_eq!(oracle(&example.tokens, &mut 0), example.label, "{}", to_text(&tokens));
            assert!(seen.insert(example.tokens.clone()), "duplicate {}", to_text(&tokens));
            assert!(tokens.iter().all(|&t| t != PAD && (t as usize) < VOCAB));
        }
        // Operators have 2..=10 arguments and nest at most 9 deep (depth 10 holds only leaves).
        let mut deepest = 0;
        for example in task.examples(Split::Train) {
            let mut depth = 0usize;
            for &t in &example.tokens {
                if Operator::from_token(u32::from(t)).is_some() {
                    depth += 1;
                    deepest = deepest.max(depth);
                } else if u32::from(t) == CLOSE {
                    depth -= 1;
                }
            }
        }
        assert!((4..MAX_DEPTH).contains(&deepest), "deepest operator nesting {deepest}");
    }

    #[test]
    fn padded_batches() {
        let task = ListOps::new(64, 100, 30, 2).unwrap();
        let padded = task.eval_batch(5, 10);
        let PaddedBatch { batch, lengths } = &padded;
        assert_eq!(batch.batch, 10);
        assert_eq!(batch.seq_len, *lengths.iter().max().unwrap());
        let (Inputs::Tokens(x), Targets::Classes(y)) = (&batch.inputs, &batch.targets) else { panic!("tokens and class targets") };
        assert_eq!((x.len(), y.len()), (10 * batch.seq_len, 10));
        for (i, row) in x.chunks_exact(batch.seq_len).enumerate() {
            let example = &task.examples(Split::Test)[5 + i];
            assert_eq!(lengths[i], example.tokens.len());
            assert!(row[..lengths[i]].iter().zip(&example.tokens).all(|(&a, &b)| a == u32::from(b)));
            assert!(row[lengths[i]..].iter().all(|&t| t == PAD), "right padding");
            assert_eq!(y[i], i32::from(example.label));
        }
        assert_eq!(task.eval_batch(25, 10).batch.batch, 5, "clipped to the test set");
        assert_eq!(task.eval_batch(40, 10).batch.batch, 0);
        // Training batches walk epochs of the training set.
        let epoch: Vec<i32> = (0..10)
            .flat_map(|step| {
                let Targets::Classes(y) = task.train_batch(step, 10).batch.targets else { unreachable!() };
                y
            })
            .collect();
        let mut counts = [0usize; CLASSES];
        epoch.iter().for_each(|&c| counts[c as usize] += 1);
        assert_eq!(counts, task.class_counts(Split::Train), "one epoch sees every training sequence once");
        // Scoring: perfect logits are all correct.
        let Targets::Classes(y) = &batch.targets else { unreachable!() };
        let mut logits = vec![0.0f32; 10 * CLASSES]; // (B, C)
        for (row, &c) in logits.chunks_exact_mut(CLASSES).zip(y) {
            row[c as usize] = 20.0;
        }
        let scored = task.score(&logits, batch).unwrap();
        assert_eq!((scored.correct, scored.counted), (10, 10));
        assert!(task.score(&logits[..CLASSES], batch).is_err());
    }

    #[test]
    fn class_distribution_at_the_published_lengths() {
        let task = ListOps::new(PUBLISHED_MAX_LEN, 400, 200, 11).unwrap();
        assert_eq!(task.min_len(), PUBLISHED_MIN_LEN);
        let mut counts = task.class_counts(Split::Train);
        for (c, n) in task.class_counts(Split::Test).into_iter().enumerate() {
            counts[c] += n;
        }
        let mut ranked: Vec<usize> = (0..CLASSES).collect();
        ranked.sort_by_key(|&c| std::cmp::Reverse(counts[c]));
        let share = counts[ranked[0]] as f64 / 600.0;
        // The published sets have about 17% in the most common class; MAX and MIN push the extremes 0 and 9 up.
        assert!((0.13..0.22).contains(&share), "most common class {} has {share:.3}: {counts:?}", ranked[0]);
        let mut extremes = [ranked[0], ranked[1]];
        extremes.sort_unstable();
        assert_eq!(extremes, [0, 9], "{counts:?}");
        assert!(counts.iter().all(|&n| n > 20), "every class occurs: {counts:?}");
        let (_, baseline) = task.majority_baseline();
        assert!((0.08..0.26).contains(&baseline), "{}", task.baseline_note());
        assert!(task.baseline_note().contains("lengths 501..1999"));
    }

    #[test]
    fn impossible_windows_are_config_errors() {
        assert!(matches!(ListOps::with_bounds(10, 11, 10, 10, 0), Err(Error::Config { .. })));
        assert!(matches!(ListOps::new(MAX_SUPPORTED_LEN + 1, 10, 10, 0), Err(Error::Config { .. })));
        assert!(matches!(ListOps::new(128, 0, 10, 0), Err(Error::Config { .. })));
        // Only `[OP d d ]` has length 4: 4 * 100 distinct sequences, fewer than asked for.
        let err = ListOps::with_bounds(3, 5, 1000, 10, 0).unwrap_err();
        assert!(matches!(err, Error::Config { .. }) && err.to_string().contains("distinct"), "{err}");
    }

    #[test]
    #[ignore = "timing: run with --ignored --nocapture"]
    fn generation_time_at_the_published_lengths() {
        for threads in [1, rayon::current_num_threads()] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let start = std::time::Instant::now();
            let task = pool.install(|| ListOps::new(PUBLISHED_MAX_LEN, 1000, 1, 0).unwrap());
            let mean = task.examples(Split::Train).iter().map(|e| e.tokens.len()).sum::<usize>() as f64 / 1000.0;
            println!("{threads} thread(s): 1,001 sequences of 500 < length < 2000 in {:?} (mean length {mean:.0})", start.elapsed());
        }
        let start = std::time::Instant::now();
        let published = ListOps::new(PUBLISHED_MAX_LEN, PUBLISHED_TRAIN_SIZE, PUBLISHED_EVAL_SIZE, 0).unwrap();
        let bytes: usize = published.examples(Split::Train).iter().map(|e| e.tokens.len()).sum();
        println!("published sizes (96,000 + 2,000) in {:?}, {:.0} MB of tokens; {}", start.elapsed(), bytes as f64 / 1e6, published.baseline_note());
    }
}
