package replies.spring;

import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.kafka.annotation.EnableKafka;
import org.springframework.kafka.annotation.KafkaListener;
import org.springframework.kafka.config.ConcurrentKafkaListenerContainerFactory;
import org.springframework.kafka.core.DefaultKafkaConsumerFactory;
import org.springframework.kafka.core.DefaultKafkaProducerFactory;
import org.springframework.kafka.core.KafkaTemplate;
import org.springframework.kafka.listener.KafkaListenerErrorHandler;
import org.springframework.kafka.support.KafkaHeaders;
import org.springframework.kafka.support.serializer.JacksonJsonSerializer;
import org.springframework.messaging.handler.annotation.SendTo;
import org.springframework.messaging.support.MessageBuilder;
import tools.jackson.core.type.TypeReference;
import tools.jackson.databind.json.JsonMapper;

/**
 * The Spring side of the interop tests: a plain Spring context (no Boot) with
 * {@code @EnableKafka} and two {@code @KafkaListener} + {@code @SendTo}
 * listeners on topics named from the system property {@code replies.topic}
 * (the base name T):
 *
 * <ul>
 *   <li>{@code T-double}: String in, String out; "21" gives "42". A request
 *       that is not an integer throws, with no listener error handler: Spring's
 *       container error handler retries and logs, and no reply is sent.</li>
 *   <li>{@code T-json}: a JSON object in (read as a String), the same object
 *       with {@code "seen_by": "spring"} and {@code "key"} (the request key)
 *       added, written by {@code JacksonJsonSerializer} (which adds a
 *       {@code __TypeId__} header). An object with {@code "fail": true} throws,
 *       and the listener error handler {@code replyingErrorHandler} answers with
 *       a reply carrying {@code kafka_exception-fqcn} and
 *       {@code kafka_exception-message} headers.</li>
 * </ul>
 */
public final class Service {

    private Service() {
    }

    static Map<String, Object> consumerProps(String bootstrap, String group) {
        Map<String, Object> props = new LinkedHashMap<>();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class);
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class);
        return props;
    }

    static Map<String, Object> producerProps(String bootstrap) {
        Map<String, Object> props = new LinkedHashMap<>();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        props.put(ProducerConfig.LINGER_MS_CONFIG, 0);
        return props;
    }

    /** Spring configuration: two container factories, each with its reply template. */
    @Configuration
    @EnableKafka
    public static class Config {

        private final String bootstrap = System.getProperty("replies.bootstrap");
        private final String group = System.getProperty("replies.topic") + "-spring-service";

        @Bean
        public KafkaTemplate<String, String> stringReplyTemplate() {
            return new KafkaTemplate<>(new DefaultKafkaProducerFactory<>(producerProps(bootstrap)));
        }

        @Bean
        public KafkaTemplate<String, Object> jsonReplyTemplate() {
            Map<String, Object> props = producerProps(bootstrap);
            props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, JacksonJsonSerializer.class);
            return new KafkaTemplate<>(new DefaultKafkaProducerFactory<>(props));
        }

        @Bean
        public ConcurrentKafkaListenerContainerFactory<String, String> kafkaListenerContainerFactory() {
            ConcurrentKafkaListenerContainerFactory<String, String> factory = new ConcurrentKafkaListenerContainerFactory<>();
            factory.setConsumerFactory(new DefaultKafkaConsumerFactory<>(consumerProps(bootstrap, group)));
            factory.setReplyTemplate(stringReplyTemplate());
            return factory;
        }

        @Bean
        public ConcurrentKafkaListenerContainerFactory<String, String> jsonContainerFactory() {
            ConcurrentKafkaListenerContainerFactory<String, String> factory = new ConcurrentKafkaListenerContainerFactory<>();
            factory.setConsumerFactory(new DefaultKafkaConsumerFactory<>(consumerProps(bootstrap, group)));
            factory.setReplyTemplate(jsonReplyTemplate());
            return factory;
        }

        @Bean
        public KafkaListenerErrorHandler replyingErrorHandler() {
            return (message, exception) -> {
                Throwable cause = exception.getCause() != null ? exception.getCause() : exception;
                String text = String.valueOf(cause.getMessage());
                return MessageBuilder.withPayload(Map.of("error", text))
                        .setHeader(KafkaHeaders.EXCEPTION_FQCN, cause.getClass().getName().getBytes(StandardCharsets.UTF_8))
                        .setHeader(KafkaHeaders.EXCEPTION_MESSAGE, text.getBytes(StandardCharsets.UTF_8))
                        .build();
            };
        }

        @Bean
        public Listeners listeners() {
            return new Listeners();
        }
    }

    /** The listeners; topic names come from the {@code replies.topic} system property. */
    public static class Listeners {

        private final JsonMapper mapper = JsonMapper.builder().build();

        @KafkaListener(id = "double", topics = "${replies.topic}-double")
        @SendTo
        public String doubleIt(String value) {
            return Long.toString(2 * Long.parseLong(value.trim()));
        }

        @KafkaListener(id = "json", topics = "${replies.topic}-json", containerFactory = "jsonContainerFactory",
                errorHandler = "replyingErrorHandler")
        @SendTo
        public Map<String, Object> json(String value,
                @org.springframework.messaging.handler.annotation.Header(name = KafkaHeaders.RECEIVED_KEY, required = false) String key) {
            Map<String, Object> object = mapper.readValue(value, new TypeReference<LinkedHashMap<String, Object>>() { });
            if (Boolean.TRUE.equals(object.get("fail"))) {
                throw new IllegalStateException("asked to fail: " + object.get("why"));
            }
            object.put("seen_by", "spring");
            object.put("key", key);
            return object;
        }
    }
}
