package recsys.flink;

import java.util.ArrayList;
import java.util.Collection;
import java.util.Comparator;
import java.util.Optional;
import java.util.PriorityQueue;

import org.apache.flink.connector.file.src.FileSourceSplit;
import org.apache.flink.connector.file.src.assigners.FileSplitAssigner;

/**
 * Hands out the file source's pending splits in path order (then offset), so that a backlog of
 * the event log (dt=YYYY-MM-DD/hr=HH/part-opened-writer-seq.jsonl) is read oldest partition
 * first, and within a partition in the order its files were opened. Flink's own assigners
 * (SimpleSplitAssigner, LocalityAwareSplitAssigner) hand them out last-in first-out or in hash
 * order, so a later hour read first moves the watermark past every earlier hour still unread.
 * Built by pipelines/flink/jvm.py, handed to the file source by pipelines/flink/ordered_splits.py.
 */
public final class PathOrderedSplitAssigner implements FileSplitAssigner {

    private static final Comparator<FileSourceSplit> PATH_ORDER =
            Comparator.comparing((FileSourceSplit split) -> split.path().toString())
                    .thenComparingLong(FileSourceSplit::offset);

    private final PriorityQueue<FileSourceSplit> pending = new PriorityQueue<>(PATH_ORDER);

    public PathOrderedSplitAssigner(Collection<FileSourceSplit> splits) {
        pending.addAll(splits);
    }

    @Override
    public Optional<FileSourceSplit> getNext(String hostname) {
        return Optional.ofNullable(pending.poll());
    }

    @Override
    public void addSplits(Collection<FileSourceSplit> splits) {
        pending.addAll(splits);
    }

    @Override
    public Collection<FileSourceSplit> remainingSplits() {
        return new ArrayList<>(pending);
    }

    /** What FileSource.Builder.setSplitAssigner takes (serialized with the job graph). */
    public static final class Provider implements FileSplitAssigner.Provider {
        private static final long serialVersionUID = 1L;

        @Override
        public FileSplitAssigner create(Collection<FileSourceSplit> splits) {
            return new PathOrderedSplitAssigner(splits);
        }
    }
}
