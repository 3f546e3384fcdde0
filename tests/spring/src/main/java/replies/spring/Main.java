package replies.spring;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.header.Header;
import org.springframework.context.annotation.AnnotationConfigApplicationContext;
import org.springframework.kafka.config.KafkaListenerEndpointRegistry;
import org.springframework.kafka.core.DefaultKafkaConsumerFactory;
import org.springframework.kafka.core.DefaultKafkaProducerFactory;
import org.springframework.kafka.listener.ContainerProperties;
import org.springframework.kafka.listener.KafkaMessageListenerContainer;
import org.springframework.kafka.listener.MessageListenerContainer;
import org.springframework.kafka.requestreply.KafkaReplyTimeoutException;
import org.springframework.kafka.requestreply.ReplyingKafkaTemplate;
import org.springframework.kafka.requestreply.RequestReplyFuture;
import org.springframework.kafka.support.KafkaHeaders;
import org.springframework.kafka.support.TopicPartitionOffset;
import org.springframework.kafka.support.serializer.JacksonJsonSerializer;
import tools.jackson.databind.json.JsonMapper;

/**
 * Command line of the Spring interop program.
 *
 * <pre>
 * serve BOOTSTRAP TOPIC
 *     runs {@link Service}'s listeners on TOPIC-double and TOPIC-json; prints
 *     "READY" once every listener has its partitions, and runs until stdin
 *     closes or the process is terminated.
 * ask BOOTSTRAP TOPIC REPLY_TOPIC COUNT [--reply-partition P] [--string-correlation] [--json] [--timeout-ms MS]
 *     asks TOPIC COUNT times with a ReplyingKafkaTemplate (request i has key
 *     "k&lt;i&gt;" and value "i", or {"n": i} written by JacksonJsonSerializer
 *     with --json); replies are read from REPLY_TOPIC, only partition P with
 *     --reply-partition (else the whole topic, in a consumer group). Prints
 *     one JSON object per request, in order, then {"done": COUNT}.
 * </pre>
 */
public final class Main {

    private static final JsonMapper MAPPER = JsonMapper.builder().build();

    private Main() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length >= 3 && args[0].equals("serve")) {
            serve(args[1], args[2]);
        } else if (args.length >= 5 && args[0].equals("ask")) {
            ask(args);
        } else {
            System.err.println("usage: serve BOOTSTRAP TOPIC | ask BOOTSTRAP TOPIC REPLY_TOPIC COUNT [options]");
            System.exit(2);
        }
    }

    private static void serve(String bootstrap, String topic) throws Exception {
        System.setProperty("replies.bootstrap", bootstrap);
        System.setProperty("replies.topic", topic);
        AnnotationConfigApplicationContext context = new AnnotationConfigApplicationContext(Service.Config.class);
        context.registerShutdownHook();
        KafkaListenerEndpointRegistry registry = context.getBean(KafkaListenerEndpointRegistry.class);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
        while (!allAssigned(registry)) {
            if (System.nanoTime() > deadline) {
                System.err.println("listeners not assigned within 60 s");
                System.exit(1);
            }
            Thread.sleep(50);
        }
        System.out.println("READY");
        System.out.flush();
        // Runs until the test closes our stdin (or terminates us).
        while (System.in.read() != -1) {
            // ignore input
        }
        context.close();
    }

    private static boolean allAssigned(KafkaListenerEndpointRegistry registry) {
        for (MessageListenerContainer container : registry.getListenerContainers()) {
            if (container.getAssignedPartitions() == null || container.getAssignedPartitions().isEmpty()) {
                return false;
            }
        }
        return !registry.getListenerContainers().isEmpty();
    }

    private static void ask(String[] args) throws Exception {
        String bootstrap = args[1];
        String topic = args[2];
        String replyTopic = args[3];
        int count = Integer.parseInt(args[4]);
        Integer replyPartition = null;
        boolean binary = true;
        boolean json = false;
        long timeoutMs = 30_000;
        for (int i = 5; i < args.length; i++) {
            switch (args[i]) {
                case "--reply-partition" -> replyPartition = Integer.parseInt(args[++i]);
                case "--string-correlation" -> binary = false;
                case "--json" -> json = true;
                case "--timeout-ms" -> timeoutMs = Long.parseLong(args[++i]);
                default -> throw new IllegalArgumentException("unknown option " + args[i]);
            }
        }

        Map<String, Object> producerProps = Service.producerProps(bootstrap);
        if (json) {
            producerProps.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, JacksonJsonSerializer.class);
        }
        String group = replyTopic + "-spring-client" + (replyPartition == null ? "" : "-" + replyPartition);
        ContainerProperties containerProps = replyPartition == null
                ? new ContainerProperties(replyTopic)
                : new ContainerProperties(new TopicPartitionOffset(replyTopic, replyPartition));
        Map<String, Object> consumerProps = Service.consumerProps(bootstrap, group);
        consumerProps.put("auto.offset.reset", "latest");
        KafkaMessageListenerContainer<String, String> container = new KafkaMessageListenerContainer<>(
                new DefaultKafkaConsumerFactory<>(consumerProps), containerProps);
        ReplyingKafkaTemplate<String, Object, String> template = new ReplyingKafkaTemplate<>(
                new DefaultKafkaProducerFactory<>(producerProps), container);
        template.setDefaultReplyTimeout(Duration.ofMillis(timeoutMs));
        template.setBinaryCorrelation(binary);
        template.setSharedReplyTopic(replyPartition == null);
        template.setReplyErrorChecker(Main::remoteError);
        template.afterPropertiesSet();
        template.start();
        if (!template.waitForAssignment(Duration.ofSeconds(60))) {
            System.err.println("reply container not assigned within 60 s");
            System.exit(1);
        }

        List<RequestReplyFuture<String, Object, String>> futures = new ArrayList<>(count);
        for (int i = 0; i < count; i++) {
            Object value = json ? Map.of("n", i) : Integer.toString(i);
            ProducerRecord<String, Object> record = new ProducerRecord<>(topic, "k" + i, value);
            record.headers().add(KafkaHeaders.REPLY_TOPIC, replyTopic.getBytes(StandardCharsets.UTF_8));
            futures.add(template.sendAndReceive(record));
        }
        HexFormat hex = HexFormat.of();
        for (int i = 0; i < count; i++) {
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("i", i);
            RequestReplyFuture<String, Object, String> future = futures.get(i);
            try {
                ConsumerRecord<String, String> reply = future.get(timeoutMs + 5_000, TimeUnit.MILLISECONDS);
                out.put("key", reply.key());
                out.put("value", reply.value());
                out.put("partition", reply.partition());
                Map<String, String> headers = new LinkedHashMap<>();
                for (Header header : reply.headers()) {
                    headers.put(header.key(), header.value() == null ? null : hex.formatHex(header.value()));
                }
                out.put("headers", headers);
                Header sent = future.getSendFuture().get().getProducerRecord().headers().lastHeader(KafkaHeaders.CORRELATION_ID);
                out.put("sent_correlation", hex.formatHex(sent.value()));
                Header partition = future.getSendFuture().get().getProducerRecord().headers().lastHeader(KafkaHeaders.REPLY_PARTITION);
                out.put("sent_reply_partition", partition == null ? null : hex.formatHex(partition.value()));
            } catch (ExecutionException ex) {
                Throwable cause = ex.getCause();
                if (cause instanceof KafkaReplyTimeoutException) {
                    out.put("timeout", true);
                } else {
                    out.put("error", String.valueOf(cause.getMessage()));
                }
            }
            System.out.println(MAPPER.writeValueAsString(out));
        }
        System.out.println(MAPPER.writeValueAsString(Map.of("done", count)));
        System.out.flush();
        template.stop();
        template.destroy();
        System.exit(0);
    }

    /** A reply carrying kafka_exception-fqcn is a remote failure (the convention Service's error handler uses). */
    private static Exception remoteError(ConsumerRecord<?, ?> record) {
        Header fqcn = record.headers().lastHeader(KafkaHeaders.EXCEPTION_FQCN);
        if (fqcn == null) {
            return null;
        }
        Header message = record.headers().lastHeader(KafkaHeaders.EXCEPTION_MESSAGE);
        String text = message == null ? "" : new String(message.value(), StandardCharsets.UTF_8);
        return new IllegalStateException(new String(fqcn.value(), StandardCharsets.UTF_8) + ": " + text);
    }
}
