// The Java client's partition for each key (BuiltInPartitioner.partitionForKey), used by the
// Rust tests as an independent check of our murmur2 partitioner.
//   java -cp kafka-clients.jar tests/java/Partition.java NUM_PARTITIONS KEY...
import org.apache.kafka.common.utils.Utils;
import java.nio.charset.StandardCharsets;

public class Partition {
    public static void main(String[] args) {
        int partitions = Integer.parseInt(args[0]);
        for (int i = 1; i < args.length; i++) {
            byte[] key = args[i].getBytes(StandardCharsets.UTF_8);
            System.out.println(Utils.toPositive(Utils.murmur2(key)) % partitions);
        }
    }
}
