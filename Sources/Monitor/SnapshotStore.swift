import EVTOnline
import Foundation
import Logging
import SaliencyCore
import SaliencyStream
import Synchronization
import Dispatch

/// Snapshots of all learned state in the state directory (docs/operations.md).
///
/// File `snapshot.bin`: magic `SALS`, u32 version, u64 payload length, u64 FNV-1a-64 of the
/// payload, payload. Written atomically (temp file, fsync, rename, fsync directory); the previous
/// good snapshot is kept as `snapshot.prev.bin`. At start-up a file that fails any check (magic,
/// version, length, checksum, structure) is moved aside as `<name>.rejected-<unix time>` with a
/// log line saying why, and the previous one is tried; with neither, the daemon says it starts
/// from zero. A model whose state was learned with other settings than its effective ones now
/// (`[pot]` with its `[models.NAME]` table on top) is refused alone: the other models load, that
/// one recalibrates, and a copy of the file is kept as `<name>.refused-<unix time>`.
final class SnapshotStore {
    static let magic: [UInt8] = Array("SALS".utf8)
    static let version: UInt32 = 1
    let directory: String
    let logger: Logger
    private let queue = DispatchQueue(label: "saliencyd.snapshot")
    private let inFlight = AtomicFlag()
    private let state = LockedString()

    init(directory: String, logger: Logger) {
        self.directory = directory
        self.logger = logger
    }

    var currentPath: String { directory + "/snapshot.bin" }
    var previousPath: String { directory + "/snapshot.prev.bin" }

    // MARK: - Encoding

    struct Header: Codable { var created: String; var next_alert_seq: UInt64; var models: Int }
    struct ProducerEntry: Codable { var id: UInt64; var model: String; var last: UInt64; var gaps: UInt64; var reordered: UInt64; var received: UInt64 }

    /// The snapshot file's bytes. The large part (each FilterBank's state) is serialized straight
    /// into one pre-sized buffer, so encoding costs about one copy of the learned state.
    static func encode(_ core: DaemonCore) throws -> [UInt8] {
        let json = JSONEncoder()
        json.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        // A model that never accepted a row has learned nothing: its schema is re-sent by its
        // producer, so it is not written (junk schemas do not survive restarts).
        let engines = core.engines.values.filter { $0.rows > 0 }.sorted { $0.schema.model < $1.schema.model }
        var w = ByteWriter(capacity: engines.reduce(1 << 16) { $0 + $1.serializedSizeBound + 192 * $1.filterCount })   // + tracker JSON (~120 B per filter measured)
        // Header: magic, version, payload length and checksum (patched once the payload is written).
        for b in magic { w.write(b) }
        w.write(version)
        let lengthAt = w.count
        w.write(UInt64(0))
        w.write(UInt64(0))
        let payloadStart = w.count
        w.write(blob: [UInt8](try json.encode(Header(created: AlertMessage.now(), next_alert_seq: core.alertLog.nextSequence, models: engines.count))))
        w.write(UInt32(engines.count))
        for e in engines {
            w.write(blob: SchemaMessage.encode(e.schema))
            w.writeBlob { e.serializeBank(into: &$0) }
            w.write(blob: [UInt8](try json.encode(e.tracker.state)))
            w.write(blob: [UInt8](try json.encode(e.active.values.sorted { $0.seq < $1.seq })))
            w.write(blob: [UInt8](try json.encode(e.modelAlert.map { [$0] } ?? [])))
            w.write(blob: [UInt8](try json.encode(e.layerExtremes)))
        }
        let prods = core.producers.map { ProducerEntry(id: $0.key, model: $0.value.model, last: $0.value.lastSequence, gaps: $0.value.gaps, reordered: $0.value.reordered, received: $0.value.received) }
        w.write(blob: [UInt8](try json.encode(prods)))
        w.write(blob: [UInt8](try json.encode(core.rejected.reduce(into: [String: UInt64]()) { $0[$1.key.rawValue] = $1.value })))
        w.write(core.gapsTotal)
        let checksum = w.bytes.withUnsafeBytes { fnv1a64(UnsafeRawBufferPointer(rebasing: $0[payloadStart...])) }
        w.overwrite(UInt64(w.count - payloadStart), at: lengthAt)
        w.overwrite(checksum, at: lengthAt + 8)
        return w.bytes
    }

    struct Restored {
        var engines: [ModelEngine]
        var producers: [UInt64: DaemonCore.Producer]
        var rejected: [RejectReason: UInt64]
        var gaps: UInt64
        var nextAlertSeq: UInt64
        /// Models left out (`refuseMismatchedModels`): learned with other settings than their
        /// effective ones now. `settings`: where those come from (`[pot]` or `[models.NAME] over [pot]`).
        var refused: [(model: String, reason: String, settings: String)] = []
    }

    /// Decodes and checks a snapshot against the running configuration. Throws with the reason.
    ///
    /// A valid checksum proves only that the file is what some writer wrote: every value is also
    /// checked for meaning (schemas by the schema rules, the bank and tracker by their own
    /// invariants, every alert's filter index and layer against its model, the alert seq, the
    /// producer and rejection tables against their bounds), so a crafted file cannot raise
    /// phantom alerts or make a later query trap.
    ///
    /// Each model's bank must have been learned with that model's effective settings
    /// (`configuration.pot(for:)`). A model that was not is an error naming it, or, with
    /// `refuseMismatchedModels` (the daemon's start-up), is left out and listed in `refused`.
    static func decode(_ bytes: [UInt8], configuration: DaemonConfiguration, acceptStoredSettings: Bool = false,
                       refuseMismatchedModels: Bool = false) throws(SaliencyError) -> Restored {
        func bad(_ m: String) -> SaliencyError { SaliencyError(.corruptState, m) }
        var r = ByteReader(bytes)
        var m: [UInt8] = []
        for _ in 0..<4 { m.append(try r.read(UInt8.self, "magic")) }
        guard m == magic else { throw bad("not a saliencyd snapshot (magic \(m))") }
        let v = try r.read(UInt32.self, "version")
        guard v == version else { throw SaliencyError(.unsupportedVersion, "snapshot version \(v); this saliencyd reads version \(version)") }
        let len = try r.read(UInt64.self, "length")
        let sum = try r.read(UInt64.self, "checksum")
        guard len == UInt64(r.remaining) else { throw bad("payload is \(r.remaining) bytes but the header says \(len) (truncated or appended)") }
        let payload = Array(bytes[r.offset...])
        guard payload.withUnsafeBytes({ fnv1a64($0) }) == sum else { throw bad("checksum mismatch: the file is corrupted") }
        var p = ByteReader(payload)
        let json = JSONDecoder()
        json.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        func decodeJSON<T: Decodable>(_ t: T.Type, _ what: String) throws(SaliencyError) -> T {
            let blob = try p.readBlob(what)
            do { return try json.decode(t, from: Data(blob)) } catch { throw bad("\(what): \(error)") }
        }
        let header = try decodeJSON(Header.self, "header")
        let count = try p.read(UInt32.self, "model count")
        guard count <= 4096, header.models == Int(count) else { throw bad("\(count) models (header says \(header.models))") }
        guard header.next_alert_seq >= 1, header.next_alert_seq <= AlertLog.maxSequence else { throw bad("next alert seq \(header.next_alert_seq) out of range") }
        var engines: [ModelEngine] = []
        var refused: [(model: String, reason: String, settings: String)] = []
        var fingerprints = Set<UInt64>()
        for _ in 0..<count {
            let schema = try SchemaMessage.decode(try p.readBlob("schema"))
            let bankBytes = try p.readBlob("filter bank")
            let trackerState = try decodeJSON(AlertTrackerState.self, "alert tracker")
            let active = try decodeJSON([AlertMessage].self, "active alerts")
            let modelAlert = try decodeJSON([AlertMessage].self, "model alert")
            let layerExtremes = try decodeJSON([UInt64].self, "layer extremes")
            let bank: FilterBank
            do {
                bank = try FilterBank(restoring: bankBytes, configuration: acceptStoredSettings ? nil : configuration.pot(for: schema.model))
            } catch where error.code == .invalidConfiguration {
                // Valid state, learned with other settings than this model's now.
                let settings = configuration.settingsSource(for: schema.model)
                guard refuseMismatchedModels else { throw SaliencyError(.invalidConfiguration, "model '\(schema.model)' (settings: \(settings)): \(error.message)") }
                guard fingerprints.insert(schema.fingerprint).inserted else { throw bad("model '\(schema.model)' appears twice") }
                refused.append((schema.model, error.message, settings))
                continue
            }
            guard bank.filterCount == schema.filterCount else { throw bad("model '\(schema.model)': bank has \(bank.filterCount) filters, schema \(schema.filterCount)") }
            let tracker = try AlertTracker(state: trackerState)
            // With pot.tails = both, each filter has two tracker slots (upper j, lower K + j).
            let slots = bank.configuration.tails == .both ? 2 * schema.filterCount : schema.filterCount
            func slot(_ a: AlertMessage, _ f: Int) -> Int { bank.configuration.tails == .both && a.labels["direction"] == "lower" ? schema.filterCount + f : f }
            guard tracker.filterCount == slots, layerExtremes.count == schema.layers.count else { throw bad("model '\(schema.model)': alert state does not match the schema") }
            guard fingerprints.insert(schema.fingerprint).inserted else { throw bad("model '\(schema.model)' appears twice") }
            // Every active alert must name a filter of this model that its tracker has firing,
            // with that filter's layer and channel; and the tracker's firing set must be exactly
            // the active alerts (else an alert could never resolve, or resolve without one).
            var seen = Set<Int>()
            for a in active {
                guard let f = a.filter, f >= 0, f < schema.filterCount else { throw bad("model '\(schema.model)': active alert names filter \(a.filter.map(String.init) ?? "none") outside 0..<\(schema.filterCount)") }
                let (l, c) = schema.locate(f)
                guard seen.insert(slot(a, f)).inserted, tracker.isFiring(slot(a, f)), a.model == schema.model, a.layer == schema.layers[l].name, a.channel == c,
                      a.seq >= 1, a.seq < header.next_alert_seq else {
                    throw bad("model '\(schema.model)': active alert for filter \(f) does not match the model's alert state")
                }
            }
            guard seen.count == tracker.firingCount else { throw bad("model '\(schema.model)': \(tracker.firingCount) firing filters but \(seen.count) active alerts") }
            guard modelAlert.count <= 1, modelAlert.allSatisfy({ $0.filter == nil && $0.model == schema.model && $0.seq >= 1 && $0.seq < header.next_alert_seq }) else {
                throw bad("model '\(schema.model)': model-level alert state is inconsistent")
            }
            guard bank.isCalibrated || (active.isEmpty && modelAlert.isEmpty && layerExtremes.allSatisfy { $0 == 0 }) else {
                throw bad("model '\(schema.model)': alerts or extremes recorded while still calibrating")
            }
            let e = try ModelEngine(schema: schema, bank: bank, tracker: tracker, recentRows: configuration.monitor.recentRows)
            for a in active { if let f = a.filter { e.active[slot(a, f)] = a } }
            e.modelAlert = modelAlert.first
            e.layerExtremes = layerExtremes
            engines.append(e)
        }
        let prods = try decodeJSON([ProducerEntry].self, "producers")
        let rejected = try decodeJSON([String: UInt64].self, "rejections")
        let gaps = try p.read(UInt64.self, "gaps")
        guard p.remaining == 0 else { throw bad("\(p.remaining) trailing bytes") }
        guard prods.count <= 1_000_000, Set(prods.map(\.id)).count == prods.count else { throw bad("producer table of \(prods.count) entries is invalid") }
        var rejectedByReason: [RejectReason: UInt64] = [:]
        for (k, v) in rejected {
            guard let r = RejectReason(rawValue: k) else { throw bad("rejection table holds an unknown reason '\(k.prefix(64))'") }
            rejectedByReason[r] = v
        }
        var producers: [UInt64: DaemonCore.Producer] = [:]
        // Most recently active first survive a smaller limits.max_producers.
        for (i, x) in prods.sorted(by: { $0.received > $1.received }).enumerated() where i < configuration.limits.maxProducers {
            producers[x.id] = .init(model: x.model, lastSequence: x.last, gaps: x.gaps, reordered: x.reordered, received: x.received)
        }
        return Restored(engines: engines, producers: producers, rejected: rejectedByReason, gaps: gaps, nextAlertSeq: header.next_alert_seq, refused: refused)
    }

    // MARK: - Files

    /// Encodes the state on the caller's (engine) thread — a memory copy, tens of ms at K = 26,560 —
    /// and writes it to disk (temp file, fsync, rotate, rename, fsync dir) on a background queue so
    /// ingest and alert latency are not held up by the disk. With `wait`, or while a previous write
    /// is still in flight, behaves synchronously / skips respectively:
    /// - `wait: true` (admin `snapshot` query, shutdown): waits for any write in flight, then writes
    ///   and returns the real outcome;
    /// - `wait: false` (the interval timer): if a write is still in flight, skips this one (the next
    ///   interval catches up) and says so.
    func write(_ core: DaemonCore, wait: Bool = false, completion: @escaping @Sendable (Result<String, SaliencyError>) -> Void = { _ in }) -> Result<String, SaliencyError>? {
        let bytes: [UInt8]
        do {
            bytes = try Self.encode(core)
        } catch let e as SaliencyError {
            completion(.failure(e)); return .failure(e)
        } catch {
            let e = SaliencyError(.io, "\(error)"); completion(.failure(e)); return .failure(e)
        }
        let models = core.engines.values.reduce(0) { $0 + ($1.rows > 0 ? 1 : 0) }
        let job: @Sendable () -> Result<String, SaliencyError> = { [directory, currentPath, previousPath, logger, state] in
            let r = Self.persist(bytes, directory: directory, current: currentPath, previous: previousPath)
            if case .success = r {
                state.withLock { $0 = AlertMessage.now() }
                logger.info("snapshot written", metadata: ["bytes": "\(bytes.count)", "models": "\(models)"])
            }
            completion(r)
            return r
        }
        if wait {
            return queue.sync { job() }
        }
        guard inFlight.trySet() else {
            logger.warning("snapshot skipped: the previous one is still being written (slow disk?)")
            return nil
        }
        let flight = inFlight
        queue.async {
            _ = job()
            flight.clear()
        }
        return nil
    }

    /// Waits for a background write to finish (shutdown).
    func drain() { queue.sync {} }

    var lastWritten: String? { state.withLock { $0 } }

    static func persist(_ bytes: [UInt8], directory: String, current: String, previous: String) -> Result<String, SaliencyError> {
        do {
            let tmp = current + ".new"
            try AtomicFile.write(bytes, to: tmp)
            if FileManager.default.fileExists(atPath: current) {
                guard rename(current, previous) == 0 else { throw SaliencyError(.io, "cannot rotate \(current): \(String(cString: strerror(errno)))") }
            }
            guard rename(tmp, current) == 0 else { throw SaliencyError(.io, "cannot install \(current): \(String(cString: strerror(errno)))") }
            AtomicFile.syncDirectory(directory)
            return .success(current)
        } catch let e as SaliencyError {
            return .failure(e)
        } catch {
            return .failure(SaliencyError(.io, "\(error)"))
        }
    }

    /// Restores the newest good snapshot into `core`, setting bad files aside.
    func restore(into core: DaemonCore) {
        for path in [currentPath, previousPath] {
            guard let data = FileManager.default.contents(atPath: path) else { continue }
            do {
                let r = try Self.decode([UInt8](data), configuration: core.configuration, refuseMismatchedModels: true)
                if !r.refused.isEmpty {
                    // The refused models' state is dropped with the next snapshots: keep a copy
                    // (undo: restore the old settings and this file as snapshot.bin).
                    let copy = "\(path).refused-\(Int(Date().timeIntervalSince1970))"
                    let kept = (try? FileManager.default.copyItem(atPath: path, toPath: copy)) != nil
                    for x in r.refused {
                        logger.error("snapshot refused for one model: its state was learned with other settings than the model's now; it recalibrates from zero when its schema arrives (the other models are restored)", metadata: [
                            "model": "\(x.model)", "reason": "\(x.reason)", "settings": "\(x.settings)",
                            "copy": "\(kept ? copy : "(could not copy the file)")",
                            "hint": "to keep the learned state instead, put the settings it was learned with back (saliencyctl state inspect \(kept ? copy : path)) and restart with that copy as snapshot.bin",
                        ])
                    }
                }
                for e in r.engines {
                    core.admit(e)
                    core.byName[e.schema.model] = e.fingerprint
                }
                core.producers = r.producers
                core.rejected = r.rejected
                core.gapsTotal = r.gaps
                core.alertLog.ensureSequence(atLeast: r.nextAlertSeq)
                logger.notice("learned state restored", metadata: [
                    "file": "\(path)", "models": "\(r.engines.map { "\($0.schema.model)(\($0.rows) rows, \($0.isCalibrated ? "monitoring" : "calibrating"))" }.joined(separator: ","))",
                    "refused": "\(r.refused.map(\.model).joined(separator: ","))",
                ])
                return
            } catch {
                let aside = "\(path).rejected-\(Int(Date().timeIntervalSince1970))"
                let moved = rename(path, aside) == 0
                logger.error("snapshot refused; \(moved ? "moved aside for inspection" : "could not move it aside")", metadata: [
                    "file": "\(path)", "aside": "\(aside)", "reason": "\(error.message)",
                    "hint": "inspect with: saliencyctl state inspect \(aside)",
                ])
            }
        }
        if FileManager.default.fileExists(atPath: currentPath) || FileManager.default.fileExists(atPath: previousPath) { return }
        logger.notice("no usable snapshot: every model starts calibrating from zero", metadata: ["state": "\(directory)"])
    }
}

/// Read-only look into a snapshot file, for `saliencyctl state inspect`.
public enum SnapshotInspector {
    public struct ModelSummary: Codable, Sendable {
        public var model: String; public var fingerprint: String; public var filters: Int; public var layers: Int
        public var phase: String; public var rows: UInt64; public var refits: UInt64; public var firing: Int
        public var tails: [String: Int]; public var extremes: UInt64
        public var level: Double; public var q: Double; public var calibration: Int; public var max_peaks: Int
        /// What the model's rows hold ("saliency" or "taylor"; the stored schema's quantity).
        public var quantity: String
        /// Which tails the model watches (`[pot] tails`) and the row transform its bank monitors
        /// (`[pot] transform`), as learned: a daemon configured otherwise refuses this state.
        public var watched_tails: String
        public var transform: String
    }
    public struct Summary: Codable, Sendable {
        public var file: String; public var bytes: Int; public var version: UInt32; public var checksum_ok: Bool
        public var next_alert_seq: UInt64; public var producers: Int; public var models: [ModelSummary]
    }

    /// Decodes and checks `path`. With a configuration, its [pot] settings must match the ones the
    /// snapshot was learned with (as the daemon requires); without, the stored settings are reported.
    public static func inspect(path: String, configuration: DaemonConfiguration? = nil) throws(SaliencyError) -> Summary {
        guard let data = FileManager.default.contents(atPath: path) else { throw SaliencyError(.io, "cannot read '\(path)'") }
        let bytes = [UInt8](data)
        let r = try SnapshotStore.decode(bytes, configuration: configuration ?? DaemonConfiguration(), acceptStoredSettings: configuration == nil)
        let models = r.engines.sorted { $0.schema.model < $1.schema.model }.map { e -> ModelSummary in
            let (tails, extremes) = e.tailCensus()
            let c = e.configuration
            return ModelSummary(model: e.schema.model, fingerprint: SchemaMessage.hex(e.fingerprint), filters: e.filterCount, layers: e.schema.layers.count,
                                phase: e.isCalibrated ? "monitoring" : "calibrating", rows: e.rows, refits: e.refitCount,
                                firing: e.active.count, tails: tails, extremes: extremes, level: c.level,
                                q: c.q, calibration: c.calibration, max_peaks: c.maxPeaks, quantity: e.schema.quantityName,
                                watched_tails: c.tails.rawValue, transform: c.transform.rawValue)
        }
        return Summary(file: path, bytes: bytes.count, version: SnapshotStore.version, checksum_ok: true, next_alert_seq: r.nextAlertSeq,
                       producers: r.producers.count, models: models)
    }
}

/// Shared "a write is in flight" flag (engine thread ↔ snapshot queue).
final class AtomicFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    /// Sets the flag if it was clear; returns whether this call set it.
    func trySet() -> Bool { flag.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged }
    func clear() { flag.store(false, ordering: .releasing) }
}

/// The time of the last completed snapshot (written by the snapshot queue, read by queries).
final class LockedString: Sendable {
    private let value = Mutex<String?>(nil)
    func withLock<R>(_ body: (inout String?) -> R) -> R { value.withLock { body(&$0) } }
}
