package recsys.flink;

import java.util.Collections;

import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.runtime.state.StateInitializationContext;
import org.apache.flink.runtime.state.StateSnapshotContext;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;

/**
 * Passes records and watermarks through, and keeps the highest watermark it passed in its
 * checkpointed state. Flink's watermark generators keep nothing: after a restore the watermark
 * starts again from nothing, so an event that was too late before the restart (the join drops
 * it, or counts its outcome late) would be accepted after it. Restored, this operator first sends
 * the checkpoint's watermark (the least over the subtasks, which is what the keyed operator
 * downstream had), before anything else, and never a lower one: an event older than that minus
 * the allowed lateness stays too late. Built and loaded by pipelines/flink/jvm.py.
 */
public final class WatermarkFloor<T> extends AbstractStreamOperator<T> implements OneInputStreamOperator<T, T> {

    private static final long serialVersionUID = 1L;
    private static final long NONE = Long.MIN_VALUE;

    private transient ListState<Long> saved;
    private transient long highest;
    private transient boolean floorSent;

    @Override
    public void initializeState(StateInitializationContext context) throws Exception {
        super.initializeState(context);
        // Union state: a restored subtask sees every subtask's value (the parallelism may change).
        saved = context.getOperatorStateStore().getUnionListState(
                new ListStateDescriptor<>("highest-watermark", Long.class));
        highest = NONE;
        if (context.isRestored()) {
            long least = Long.MAX_VALUE;
            for (Long value : saved.get()) {
                least = Math.min(least, value);
            }
            highest = least == Long.MAX_VALUE ? NONE : least;
        }
    }

    @Override
    public void processElement(StreamRecord<T> element) throws Exception {
        sendFloor();
        output.collect(element);
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        sendFloor();
        if (mark.getTimestamp() > highest) {
            highest = mark.getTimestamp();
            super.processWatermark(mark);
        }
    }

    @Override
    public void snapshotState(StateSnapshotContext context) throws Exception {
        super.snapshotState(context);
        saved.update(Collections.singletonList(highest));
    }

    /** The restored watermark, once, ahead of the first record or watermark after a restore. */
    private void sendFloor() throws Exception {
        if (!floorSent) {
            floorSent = true;
            if (highest != NONE) {
                super.processWatermark(new Watermark(highest));
            }
        }
    }
}
