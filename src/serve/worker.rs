//! The inference worker: one thread that owns the classifier and answers
//! texts from a bounded queue, and the per-session [`Slot`] through which a
//! session hands it a text and waits for the answer. A reload hands it a
//! new classifier through the same queue, so the swap falls between two
//! texts: each answer comes from exactly one model, and says which.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use edge_bert_model::manifest::Task;
use edge_bert_model::ner::Entity;
use edge_bert_model::{alloc_probe, Classifier, Error, Outcome, Result};
use edge_bert_wire::ErrorCode;

use super::reload::Served;
use super::{Fault, Shared, TICK};

/// Work for the worker, in queue order.
pub(crate) enum Job {
    /// A text to classify, embed or find entities in. The buffers belong
    /// to the session: they travel to the worker and come back with the
    /// reply, so no request allocates one.
    Text {
        bufs: Buffers,
        want: Want,
        reply: SyncSender<Reply>,
    },
    /// A verified, warmed-up model to serve from the next text on; `done`
    /// hears whether it was swapped in.
    Swap {
        clf: Box<Classifier>,
        served: Arc<Served>,
        done: SyncSender<bool>,
    },
}

/// A session's buffers for one text, allocated when the session opens.
#[derive(Debug)]
pub(crate) struct Buffers {
    /// The text.
    text: String,
    /// An embedding's values.
    vector: Vec<f32>,
    /// An NER model's entities.
    entities: Vec<Entity>,
}

/// What a request wants of a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// A text without an op: labels from a classifier, entities from an
    /// NER model; `threshold`: the request sent its own (multi-label only).
    Classify {
        threshold: bool,
    },
    Embed,
}

/// What the worker made of a text. Passed by value (boxing the outcome
/// would allocate on every request).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Done {
    Classified(Outcome),
    /// The vector is in the slot's vector buffer.
    Embedded {
        tokens: usize,
        truncated: bool,
    },
    /// The entities are in the slot's entity buffer.
    Entities {
        tokens: usize,
        truncated: bool,
    },
}

/// The buffers, handed back, and the answer.
type Reply = (Buffers, Answer);

/// What the worker made of a text and the model that did it, or the
/// error to answer.
pub(super) type Answer = std::result::Result<(Done, Arc<Served>), (ErrorCode, String)>;

/// Why `clf` cannot do what `want` asks (`wrong_task`), if it cannot.
fn wrong_task(clf: &Classifier, want: Want) -> Option<String> {
    let name = &clf.manifest().name;
    match (clf.task(), want) {
        (Task::Classify, Want::Classify { threshold: true }) => Some(format!(
            "\"threshold\" is for multi-label models; the served model ({name}) gives one label"
        )),
        (Task::Ner, Want::Classify { threshold: true }) => Some(format!(
            "\"threshold\" is for multi-label models; the served model ({name}) is an NER model, which gives entities"
        )),
        (Task::Classify | Task::Multilabel { .. } | Task::Ner, Want::Classify { .. })
        | (Task::Embed { .. }, Want::Embed) => None,
        (Task::Classify | Task::Multilabel { .. }, Want::Embed) => Some(format!(
            "the served model ({name}) is a classifier: send {{\"text\": ...}} without \"op\""
        )),
        (Task::Embed { .. }, Want::Classify { .. }) => Some(format!(
            "the served model ({name}) is an embedding model: send {{\"op\": \"embed\", \"text\": ...}}"
        )),
        (Task::Ner, Want::Embed) => Some(format!(
            "the served model ({name}) is an NER model: send {{\"text\": ...}} without \"op\" for its entities"
        )),
    }
}

/// Runs one text through `clf`; an embedding goes into the vector buffer
/// (resized to the model's dimension) and entities into the entity buffer,
/// which allocate only past their capacity.
fn run(clf: &mut Classifier, bufs: &mut Buffers, want: Want) -> Result<Done> {
    let text = bufs.text.as_str();
    match want {
        Want::Classify { .. } if matches!(clf.task(), Task::Ner) => {
            let (tokens, truncated) = clf.entities_into(text, &mut bufs.entities)?;
            Ok(Done::Entities { tokens, truncated })
        }
        Want::Classify { .. } => clf.classify_outcome(text).map(Done::Classified),
        Want::Embed => {
            bufs.vector.resize(clf.task().dim(), 0.0);
            let (tokens, truncated) = clf.embed_into(text, &mut bufs.vector)?;
            Ok(Done::Embedded { tokens, truncated })
        }
    }
}

/// Starts the worker. It ends when every sender of `jobs` is gone: after
/// shutdown, once the queue is drained.
///
/// The worker is supervised: a panic while classifying is caught, that
/// text is answered `internal`, and the classifier (whose state the panic
/// may have left half-done) is never used again. Every later text is
/// answered `internal` too, `health` reports the failure, and the server
/// stops and exits 1 (systemd's `Restart=on-failure` starts it afresh).
pub(super) fn spawn(
    mut clf: Classifier,
    mut served: Arc<Served>,
    jobs: Receiver<Job>,
    shared: Arc<Shared>,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || {
            alloc_probe::mark_loop_thread();
            let mut failed = false;
            while let Ok(job) = jobs.recv() {
                let job = match job {
                    Job::Text { bufs, want, reply } => (bufs, want, reply),
                    Job::Swap {
                        clf: new,
                        served: new_served,
                        done,
                    } => {
                        // A failed worker stays failed: the server is stopping.
                        if !failed {
                            log::info!("model {} now serving", new_served.id.tag());
                            clf = *new;
                            served = new_served;
                        }
                        let _ = done.send(!failed);
                        continue;
                    }
                };
                shared.metrics.queued.fetch_sub(1, Ordering::Relaxed);
                let (mut bufs, want, reply) = job;
                if failed {
                    let why = "the inference worker failed; the server is restarting".into();
                    let _ = reply.send((bufs, Err((ErrorCode::Internal, why))));
                    continue;
                }
                if let Some(why) = wrong_task(&clf, want) {
                    let _ = reply.send((bufs, Err((ErrorCode::WrongTask, why))));
                    continue;
                }
                let started = Instant::now();
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if let Some(Fault::WorkerPanic(t)) = &shared.fault {
                        if *t == bufs.text {
                            panic!("EDGE_BERT_FAULT: injected worker panic");
                        }
                    }
                    run(&mut clf, &mut bufs, want)
                }));
                shared.metrics.record(started.elapsed());
                let r = match run {
                    Ok(r) => r
                        .map(|o| (o, served.clone()))
                        .map_err(|e| (ErrorCode::ModelError, e.to_string())),
                    Err(panic) => {
                        failed = true;
                        let what = panic_message(&*panic);
                        shared.fail(format!("the inference worker panicked: {what}"));
                        Err((
                            ErrorCode::Internal,
                            "the inference worker failed on this text; the server is restarting"
                                .into(),
                        ))
                    }
                };
                let _ = reply.send((bufs, r));
            }
        })
        .map_err(|e| Error::io("inference thread", e))
}

/// Hands a new model to the worker, behind the texts already queued, and
/// waits until it serves.
pub(super) fn swap(
    shared: &Shared,
    clf: Classifier,
    served: Arc<Served>,
) -> std::result::Result<(), String> {
    let sender = shared
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or("the server is stopping")?;
    let (done, swapped) = mpsc::sync_channel(1);
    let job = Job::Swap {
        clf: Box::new(clf),
        served,
        done,
    };
    sender
        .send(job)
        .map_err(|_| "the inference worker has stopped".to_string())?;
    match swapped.recv() {
        Ok(true) => Ok(()),
        _ => Err("the inference worker failed; the model was not swapped in".into()),
    }
}

/// The message a panic was raised with.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// A session's line to the worker: its buffers and reply channel,
/// allocated when the session opens.
pub(super) struct Slot {
    /// The buffers (away at the worker while a text is in flight).
    bufs: Option<Buffers>,
    reply_tx: SyncSender<Reply>,
    reply_rx: Receiver<Reply>,
}

impl Slot {
    /// A slot for texts of up to `text_bytes`, vectors of `dim` values and
    /// `entities` entities.
    pub(super) fn new(text_bytes: usize, dim: usize, entities: usize) -> Slot {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        Slot {
            bufs: Some(Buffers {
                text: String::with_capacity(text_bytes),
                vector: Vec::with_capacity(dim),
                entities: Vec::with_capacity(entities),
            }),
            reply_tx,
            reply_rx,
        }
    }

    /// The last embedding's values (empty before the first).
    pub(super) fn vector(&self) -> &[f32] {
        self.bufs.as_ref().map_or(&[], |b| &b.vector)
    }

    /// The last text's entities (empty before the first).
    pub(super) fn entities(&self) -> &[Entity] {
        self.bufs.as_ref().map_or(&[], |b| &b.entities)
    }

    /// Runs one text (already unescaped) through the worker; `Err` is the
    /// error code and message to answer with. An embedding's values are
    /// then in [`Slot::vector`], entities in [`Slot::entities`].
    pub(super) fn run(&mut self, shared: &Shared, text: &str, want: Want) -> Answer {
        let sender = shared
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(sender) = sender else {
            return Err((ErrorCode::ShuttingDown, "the server is stopping".into()));
        };
        let mut bufs = self.bufs.take().unwrap_or_else(|| Buffers {
            text: String::with_capacity(shared.cfg.max_text_bytes + 8),
            vector: Vec::new(),
            entities: Vec::new(),
        });
        bufs.text.clear();
        bufs.text.push_str(text);
        shared.metrics.queued.fetch_add(1, Ordering::Relaxed);
        let job = Job::Text {
            bufs,
            want,
            reply: self.reply_tx.clone(),
        };
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = sender.try_send(job)
        {
            if let Job::Text { bufs, .. } = job {
                self.bufs = Some(bufs);
            }
            shared.metrics.queued.fetch_sub(1, Ordering::Relaxed);
            shared.metrics.errors.fetch_add(1, Ordering::Relaxed);
            return Err((
                ErrorCode::Busy,
                "the request queue is full; try again".into(),
            ));
        }
        loop {
            match self.reply_rx.recv_timeout(TICK) {
                Ok((bufs, result)) => {
                    self.bufs = Some(bufs);
                    return result.inspect_err(|_| {
                        shared.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    });
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err((ErrorCode::Internal, "worker stopped".into()))
                }
            }
        }
    }
}
