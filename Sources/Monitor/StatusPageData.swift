import Foundation
import SaliencyCore
import SaliencyStream
import Synchronization

/// The status page's way into the engine thread, which owns all model state: the HTTP side puts a
/// `Ticket` in this bounded queue and waits (with a timeout) for its completion; the engine loop
/// takes a few tickets per turn (`EngineLoop.run`, after the sockets) and completes them with
/// typed answers built by `DaemonCore.statusPage`. The engine never waits on the HTTP side: a
/// full queue refuses at once (the page answers 503), and a ticket whose requester gave up is
/// skipped unanswered.
final class StatusMailbox: Sendable {
    enum Outcome: Sendable {
        case answer(StatusPageAnswer)
        /// The queue was full (`capacity` requests waiting).
        case busy
        /// The engine did not answer within the timeout.
        case timeout
        /// The engine has stopped (shutdown).
        case stopped
    }

    /// One request and its one-shot completion (the first `complete` wins; later ones do nothing).
    final class Ticket: Sendable {
        let request: StatusPageRequest
        private let completion: Mutex<(@Sendable (Outcome) -> Void)?>

        init(_ request: StatusPageRequest, completion: @escaping @Sendable (Outcome) -> Void) {
            self.request = request
            self.completion = Mutex(completion)
        }

        /// Whether someone already completed the ticket (answered, timed out, or stopped).
        var isDone: Bool { completion.withLock { $0 == nil } }

        func complete(_ o: Outcome) {
            let c = completion.withLock { c -> (@Sendable (Outcome) -> Void)? in defer { c = nil }; return c }
            c?(o)
        }
    }

    let capacity: Int
    private let state = Mutex<(queue: [Ticket], closed: Bool)>(([], false))

    init(capacity: Int = 8) { self.capacity = capacity }

    /// Queues a ticket; false when the queue is full or the engine has stopped (the caller answers at once).
    func submit(_ t: Ticket) -> Outcome? {
        state.withLock { s -> Outcome? in
            if s.closed { return .stopped }
            if s.queue.count >= capacity { return .busy }
            s.queue.append(t)
            return nil
        }
    }

    /// Up to `limit` waiting tickets, oldest first (engine thread).
    func take(limit: Int) -> [Ticket] {
        state.withLock { s in
            let n = min(limit, s.queue.count)
            defer { s.queue.removeFirst(n) }
            return Array(s.queue.prefix(n))
        }
    }

    var waiting: Int { state.withLock { $0.queue.count } }

    /// The engine stopped: every waiting ticket and every later submit is answered `.stopped`.
    func close() {
        let pending = state.withLock { s -> [Ticket] in s.closed = true; defer { s.queue = [] }; return s.queue }
        for t in pending { t.complete(.stopped) }
    }

    /// Asks the engine and waits at most `timeout` (HTTP side).
    func ask(_ request: StatusPageRequest, timeout: Duration) async -> Outcome {
        // The timeout is a GCD timer, not a sleeping Task: it must fire even when the cooperative
        // pool is busy (measured: a Task.sleep of 200 ms fired after 38 s while other work held
        // both cooperative threads of a 2-core machine). Completion is one-shot, so a timer that
        // fires after the answer does nothing; it only holds the ticket until then.
        let c = timeout.components
        let nanos = Int(c.seconds) * 1_000_000_000 + Int(c.attoseconds / 1_000_000_000)
        let outcome = await withCheckedContinuation { (cont: CheckedContinuation<Outcome, Never>) in
            let t = Ticket(request) { cont.resume(returning: $0) }
            if let refused = submit(t) {
                t.complete(refused)
                return
            }
            DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(nanos)) { t.complete(.timeout) }
        }
        return outcome
    }
}

// MARK: - Engine side: typed answers from the engine's state

extension DaemonCore {
    /// Answers one status-page request from the engine's state (engine thread only). Uses the same
    /// typed replies as the queries (`status`, `ModelEngine.statusEntry/top/filter`).
    func statusPage(_ request: StatusPageRequest, lastSnapshot: String?, snapshotHealth: (failures: UInt64, error: String?) = (0, nil)) -> StatusPageAnswer {
        switch request {
        case .overview:
            let st = status(lastSnapshot: lastSnapshot, snapshotHealth: snapshotHealth)
            let (firing, total) = firingAlerts(of: Array(engines.values))
            var maps: [String: HeatMap] = [:]
            for m in st.models.prefix(StatusPage.maxModels) where maps.count < StatusPage.overviewHeatMaps {
                guard let fp = byName[m.model], let e = engines[fp], let hm = heatMap(e, layers: StatusPage.overviewLayers, cells: StatusPage.overviewCells) else { continue }
                maps[m.model] = hm
            }
            return .overview(OverviewPage(status: st, firing: firing, firingTotal: total, heatMaps: maps))
        case .model(let name):
            let e: ModelEngine
            do { e = try engine(name) } catch { return .notFound(error.message) }
            let uptime = ContinuousClock.now - startedAt
            let secs = Double(uptime.components.seconds) + Double(uptime.components.attoseconds) * 1e-18
            let entry = e.statusEntry(uptimeSeconds: secs, statusLayers: Self.statusLayers)
            var page = ModelPage(model: entry, heatMap: heatMap(e, layers: StatusPage.modelLayers, cells: StatusPage.modelCells),
                                 topPOT: nil, topZ: nil, topNote: nil, firing: [], firingTotal: 0)
            (page.firing, page.firingTotal) = firingAlerts(of: [e])
            do {
                page.topPOT = try e.top(k: StatusPage.topK, by: .pot, window: .latest)
                page.topZ = try e.top(k: StatusPage.topK, by: .zscore, window: .latest)
            } catch {
                page.topNote = error.message
            }
            return .model(page)
        case .filter(let name, let j):
            let e: ModelEngine
            do { e = try engine(name) } catch { return .notFound(error.message) }
            do {
                let f = try e.filter(.index(j))
                let phase = e.isCalibrated ? "monitoring" : "calibrating (\(e.rows)/\(e.configuration.calibration))"
                return .filter(FilterPage(filter: f, history: e.history(filter: j, rows: StatusPage.historyRows), phase: phase))
            } catch {
                return .notFound(error.message)
            }
        }
    }

    /// Firing alerts of `engines`, oldest first, at most `StatusPage.maxAlerts`, and how many there are.
    private func firingAlerts(of engines: [ModelEngine]) -> ([AlertMessage], Int) {
        let all = engines.flatMap(\.firingAlerts).sorted { $0.seq < $1.seq }
        return (Array(all.prefix(StatusPage.maxAlerts)), all.count)
    }

    private func heatMap(_ e: ModelEngine, layers: Int, cells: Int) -> HeatMap? {
        guard let scores = e.latestScores() else { return nil }
        return HeatMap.build(layers: e.schema.layers.map { ($0.name, $0.filters) }, scores: scores, extremes: e.latestExtremes,
                             maxLayers: layers, maxCells: cells)
    }
}
