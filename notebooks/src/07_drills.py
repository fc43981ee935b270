# Source of notebooks/07_drills.ipynb (build: .venv/bin/python tools/nb.py build notebooks/src/07_drills.py)

# %% [markdown]
# # 07 · Incident drills: which layer cut the stream?
#
# **The question.** Your users say the assistant "stops answering". Somewhere between their client,
# the edge proxy, the app and the model, one thing is wrong. Can your team find the layer and the cause
# with the steps of the ladder, name a fix, and prove it heals the incident, against the clock? A drill
# (in the spirit of Google SRE's *Wheel of Misfortune*) builds a real stack on loopback (the streamlab
# mock model, a small OpenAI-compatible app under uvicorn or a real gunicorn, an edge proxy with
# `streamlab.hops` faults)
# with one hidden cause picked by a seed. The trainee sees what the users saw, climbs the ladder (every
# step prints what it found and costs minutes on the drill's clock), and answers. Facilitators: see
# `docs/facilitator.md`.
#
# 0. Setup
# 1. Your drill
# 2. The ladder
# 3. Your answer
# 4. Facilitator: every kind of drill, solved
# 5. Summary
# 6. Exercises

# %% [markdown]
# ## 0. Setup
#
# `sl.offline()` refuses connections that leave loopback. Each drill runs its own stack under
# `sl.drills.SCALE` (one scenario second in 25 ms of wall clock): durations printed are production
# seconds, and each step takes a second or two. A stack whose app runs under a real gunicorn runs at
# 0.1 instead (gunicorn's timers count whole wall-clock seconds, and its arbiter looks once a second):
# there a step takes four to seven seconds.

# %%
import streamlab as sl
from IPython.display import Markdown

print(sl.require(openai="2.54.0", httpx="0.28.1"))
sl.offline()
print("one scenario second runs in", sl.drills.SCALE, "s of wall-clock time")

# %% [markdown]
# ## 1. Your drill
#
# `sl.drills.draw()` draws a seed now, so the drill below is a different one every time the notebook
# runs, and nobody (not even the stored outputs) knows its cause. A facilitator who hands out seeds
# writes `sl.drills.Drill(seed=<your team's seed>)` instead. `drill.start()` starts the stack for the
# `with` block; every step also works outside it (it then starts and stops a stack of its own).
#
# The incident as reported: two users, alice and bob, asked at the same time through the usual client
# (the openai SDK through the edge). `symptom()` prints what each one got: words, when the first word
# came, how long it took, how it ended, and the first words of the answer (the model echoes the
# question, so an answer is easy to recognise).

# %% tags=["nbval-ignore-output"]
drill = sl.drills.draw()
print(drill)
with drill.start():
    drill.symptom()

# %% [markdown]
# ## 2. The ladder
#
# Each step is a function of the drill; each prints what it found (facts: statuses, times, headers,
# log lines, never a verdict) and adds minutes to `drill.clock`:
#
# | step | what it does | minutes |
# |---|---|---|
# | `drill.timeline()` | one streaming request through the stack, every read timestamped (streamlab diagnose's timeline probe): TTFB, TTFT, gaps, headers, end markers | 5 |
# | `drill.streaming_off()` | the same request with `stream=false` | 5 |
# | `drill.raw_sdk()` | the openai SDK's own view: exception class, finish_reason | 5 |
# | `drill.concurrency(n)` | `n` users at once (`n=1`: one user alone) | 10 |
# | `drill.bypass("edge")`, `drill.bypass("app")` | the same request straight to the app, or straight to the model | 10 |
# | `drill.one_worker()` | the app's worker count, two users straight to one worker | 10 |
# | `drill.logs("edge")`, `logs("app")`, `logs("model")` | what that hop logged during one request | 10 |
# | `drill.answer(layer=, cause=, fix=)` | checks the diagnosis, applies the fix, re-runs the incident | 10 |
#
# The first step is always the cheapest one that splits the stack in two. Here is the timeline of your
# drill; add the cells you need below it.

# %% tags=["nbval-ignore-output"]
drill.timeline()
print("clock:", drill.clock, "min")

# %% [markdown]
# ## 3. Your answer
#
# An answer names a layer, a cause and a fix from these lists. The drill applies the fix to the same
# stack and re-runs the incident: the fix counts only if every user then gets their own complete
# answer as it was written (or, for an answer that would otherwise end short without a word, is told
# so). Scoring: layer 20 points, cause 40, a fix that healed the re-run 40; ties are broken by the
# clock. Every answer costs 10 minutes, right or wrong.

# %%
print("layers:", ", ".join(sl.drills.LAYERS))
print("causes:", ", ".join(sl.drills.CAUSES))
display(Markdown("\n".join(["| fix | what it changes |", "|---|---|"]
                           + [f"| `{name}` | {what} |" for name, (what, _) in sorted(sl.drills.FIXES.items())])))

# %% [markdown]
# Write your answer in the cell below (it is left empty in the notebook as shipped), then run
# `drill.debrief()` to see the cause on the multi-hop timeline:
#
# ```python
# result = drill.answer(layer="...", cause="...", fix="...")
# drill.debrief()
# ```

# %%
# your answer here

# %% [markdown] tags=["facilitator"]
# ## 4. Facilitator: every kind of drill, solved
#
# **Facilitators only** (the trainee edition, `tools/nb.py trainee`, drops this section). Each kind of
# drill with the seed that draws it among all kinds (`sl.drills.seed_for`), solved with the expected
# answer: nbval runs this section, so every kind is proven solvable and every listed fix proven to heal
# it. Nothing here concerns the drill drawn in section 1.

# %% tags=["facilitator"]
SEEDS = {kind: sl.drills.seed_for(kind) for kind in sl.drills.KINDS}
solved = []
for kind, seed in SEEDS.items():
    d = sl.drills.Drill(seed=seed)
    spec = sl.drills.KINDS[kind]
    with d.start():
        result = d.answer(layer=spec.layers[0], cause=spec.causes[0], fix=spec.fixes[0])
    assert result.points == 100, (kind, result)
    solved.append((kind, d))

# %% tags=["facilitator"]
display(Markdown("\n".join(
    ["| seed | kind | layer | cause | fix that healed the re-run | clock (min) | points |", "|---|---|---|---|---|---|---|"]
    + [f"| {d.seed} | {kind} | {sl.drills.KINDS[kind].layers[0]} | {sl.drills.KINDS[kind].causes[0]} | "
       f"`{d.results[-1].fix}` | {d.clock} | {d.results[-1].points} |" for kind, d in solved])))

# %% [markdown] tags=["facilitator"]
# A debrief: the cause, every fix that heals it, and the incident on the multi-hop timeline (model,
# app, edge, and the client at the bottom). Here, the gateway deadline: the lanes stop together at 29 s
# while the model was still sending.

# %% tags=["facilitator", "nbval-ignore-output"]
sl.drills.Drill(seed=SEEDS["gateway_deadline"]).debrief();

# %% [markdown]
# ## 5. Summary
#
# | what | where |
# |---|---|
# | a drill per team, replayable | `sl.drills.Drill(seed=N)`, seeds from the facilitator (`sl.drills.seed_for`) |
# | what the users saw | `drill.symptom()` |
# | the ladder, scored on a clock | `timeline`, `streaming_off`, `raw_sdk`, `concurrency`, `bypass`, `one_worker`, `logs` |
# | the answer, proven by a re-run | `drill.answer(layer=, cause=, fix=)` |
# | the debrief | `drill.debrief()` |
# | the same ladder on your own stack | `streamlab diagnose URL` |
#
# The lesson of every drill: split the stack with the cheapest step first (bypass a hop, one user,
# streaming off), then read the logs of the layer that is left.

# %% [markdown]
# ## 6. Exercises
#
# **Exercise 1.** Two kinds of drill cut the stream after exactly the same silence. Which step tells
# them apart, and what does it show? Try it on the seeds of `upstream_read_timeout` and `lb_idle_timeout`.

# %% tags=["solution"]
# Reading the hop's own log (10 minutes) names the product's timer; the client sees the same cut in both.
for kind in ("upstream_read_timeout", "lb_idle_timeout"):
    sl.drills.Drill(seed=sl.drills.seed_for(kind)).logs("edge")

# %% [markdown]
# **Exercise 2.** A drill restricted to the app's kinds, `sl.drills.Drill(seed=3, kinds=("blocked_loop",
# "shared_state"))`: solve it with at most two steps.

# %% tags=["solution"]
# Two users at once split the two kinds: one waits for the other, or both get the same answer.
ex2 = sl.drills.Drill(seed=3, kinds=("blocked_loop", "shared_state"))
with ex2.start():
    ex2.concurrency(2)
    # bob's first word came only when alice's answer was complete: one stream at a time.
    ex2.answer(layer="app", cause="blocked_loop", fix="async_client")

# %% [markdown]
# **Exercise 3.** The `client_abort` drill has two fixes that heal it. Find both, and say which one
# also protects against an edge that cuts silences.

# %% tags=["solution"]
# Every fix is applied and re-run; only those that heal score the fix points.
ex3 = sl.drills.Drill(seed=sl.drills.seed_for("client_abort"))
with ex3.start():
    for fix in ("raise_client_timeout", "heartbeat", "raise_read_timeout"):
        ex3.answer(layer="client", cause="client_abort", fix=fix)

# %% [markdown]
# **Exercise 4.** Two kinds cut a stream while its words are still flowing, about 30 s in:
# `gateway_deadline` and `sync_worker_timeout`. Which step tells them apart, and whose log names the
# timer? Would the heartbeat, which heals the idle timeouts, heal the second one?

# %% tags=["solution", "nbval-ignore-output"]
# Straight to the app, the deadline's stream completes; the worker's is cut 30 to 40 s in all the same, and
# the app's log is gunicorn's: WORKER TIMEOUT, then the worker's SystemExit. The words flowed once a second, so
# there was no silence for a heartbeat to fill; and a sync worker tells gunicorn's arbiter it is alive only
# between requests, so not even a heartbeat through a pause would keep it (tests/test_drills.py pins that with
# a 60 s pause): the re-run says so.
sl.drills.Drill(seed=sl.drills.seed_for("gateway_deadline")).bypass("edge")
ex4 = sl.drills.Drill(seed=sl.drills.seed_for("sync_worker_timeout"))
with ex4.start():
    ex4.bypass("edge")
    ex4.logs("app")
    ex4.answer(layer="app", cause="worker_timeout", fix="heartbeat")
